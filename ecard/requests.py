"""Request types for views that only run for a signed-in user.

``HttpRequest.user`` is ``User | AnonymousUser``; behind ``login_required`` (or a role decorator
built on it) it is always a ``User``. Views say so in their signature instead of narrowing by hand.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request


class AuthenticatedHttpRequest(HttpRequest):
    """An ``HttpRequest`` that passed ``login_required``."""

    user: User


def acting_user(request: Request | HttpRequest) -> User:
    """The signed-in user behind an API or portal request; 401 when there is none.

    API views already require authentication, so the refusal here is a guard, not a rule.
    """
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated()
    return user
