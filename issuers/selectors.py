"""Read operations of the issuers app."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser


def user_profile(user: AbstractBaseUser) -> dict[str, Any]:
    """What the API tells a signed-in user about themselves."""
    return {"username": user.get_username()}
