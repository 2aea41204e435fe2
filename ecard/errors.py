"""The error every service raises when a business rule refuses an operation."""

from __future__ import annotations


class ServiceError(Exception):
    """A business rule refused the operation; the message is safe to show to the caller.

    ``field`` names the input at fault (for forms and problem documents); ``code`` is a short
    machine-readable reason. Codes ``duplicate`` and ``state`` are conflicts (HTTP 409).
    """

    CONFLICT_CODES = frozenset({"duplicate", "state", "conflict"})

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code

    @property
    def is_conflict(self) -> bool:
        return self.code in self.CONFLICT_CODES
