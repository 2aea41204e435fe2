"""Signal receivers of the audit app: refused logins into the security event log."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from audit import security


def login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any) -> None:
    """Django sends this for every refused password (portal and admin login; credentials already
    cleansed of the password). Only the username is kept, and only as a prefix if no such account."""
    where = "admin" if request is not None and request.path.startswith("/admin/") else "portal"
    security.record(
        security.Kind.LOGIN_FAILED,
        request=request,
        username=str(credentials.get("username", "") or ""),
        status=None,
        reason=f"{where} login: wrong username or password",
    )
