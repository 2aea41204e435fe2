"""The error every service raises when a business rule refuses an operation."""

from __future__ import annotations


class ServiceError(Exception):
    """A business rule refused the operation; the message is safe to show to the caller.

    ``field`` names the input at fault (for forms and problem documents); ``code`` is a short
    machine-readable reason. Codes ``duplicate`` and ``state`` are conflicts (HTTP 409);
    ``unavailable`` is the platform's own failure, to be retried later (HTTP 503).
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

    @property
    def http_status(self) -> int:
        if self.code == "unavailable":
            return 503
        return 409 if self.is_conflict else 404 if self.code == "not_found" else 400
