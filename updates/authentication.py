"""DRF authentication for client agents: ``Authorization: Agent <token>``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
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


class AgentTokenScheme(OpenApiAuthenticationExtension):
    """Documents the agent credential in the OpenAPI schema."""

    target_class = "updates.authentication.AgentTokenAuthentication"
    name = "agentToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "Device credential of a client agent: `Agent eca_<key id>_<secret>`",
        }
