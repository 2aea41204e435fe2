"""Who is asking: the questions the core and the audit log ask of a caller to scope what they see.

The memberships that answer them are the issuers app's (:mod:`issuers.roles`), which sits above the
core and the audit log (docs/ARCHITECTURE.md, "Layers"). So this module states the questions as a
protocol and issuers registers the resolver (``issuers.apps.IssuersConfig.ready``); ``ecard.api``
and ``audit`` ask through :func:`principal` and never import issuers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Principal(Protocol):
    """A user's standing on the platform (one per request; :class:`issuers.roles.Principal`)."""

    @property
    def user_id(self) -> int | None: ...

    @property
    def is_authenticated(self) -> bool: ...

    @property
    def is_agency(self) -> bool: ...

    @property
    def is_regulator(self) -> bool: ...

    @property
    def is_citizen(self) -> bool: ...

    @property
    def agency_operator(self) -> bool: ...

    @property
    def bank_ids(self) -> list[int]: ...

    @property
    def bank_slugs(self) -> list[str]: ...


PrincipalResolver = Callable[[Any], Principal]
_resolver: PrincipalResolver | None = None


def register_resolver(resolver: PrincipalResolver) -> None:
    """Install the function from a user (or None, or an anonymous user) to their principal."""
    global _resolver
    _resolver = resolver


def principal(user: Any) -> Principal:
    """The principal of ``user`` through the registered resolver."""
    if _resolver is None:
        raise RuntimeError("no principal resolver registered (ecard.principals.register_resolver)")
    return _resolver(user)
