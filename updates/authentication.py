"""DRF authentication for client agents: ``Authorization: Agent <token>``."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from updates import services

KEYWORD = "Agent"


class AgentTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates a device credential; ``request.auth`` is the :class:`AgentCredential`."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith(KEYWORD + " "):
            return None
        credential = services.authenticate_agent(header[len(KEYWORD) + 1 :].strip())
        if credential is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked agent credential.")
        return credential.user, credential

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD
