"""DRF authentication for client agents: ``Authorization: Agent <token>``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.utils.functional import SimpleLazyObject
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from updates import services

KEYWORD = "Agent"


class AgentTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates a device or terminal credential; ``request.auth`` is the :class:`AgentCredential`.

    ``request.user`` is the card holder of a device credential; a terminal acts for no user (it is
    anonymous as a user, and only the relay API, which asks for ``request.auth``, accepts it)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith(KEYWORD + " "):
            return None
        credential = services.authenticate_agent(header[len(KEYWORD) + 1 :].strip())
        if credential is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked agent credential.")
        if credential.user_id is None:
            return AnonymousUser(), credential
        # The holder is loaded only if something reads request.user (the relay views do not).
        return SimpleLazyObject(lambda: credential.user), credential

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
            "description": (
                "Device credential of a card holder's agent, or terminal credential of an organisation: "
                "`Agent eca_<key id>_<secret>`"
            ),
        }
