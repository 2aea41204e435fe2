"""Read operations of the updates app, scoped to what the caller may see."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from issuers.roles import principal
from updates.models import AgentCredential, WorkerHeartbeat


def heartbeat_for(token: str) -> WorkerHeartbeat | None:
    return WorkerHeartbeat.objects.filter(token=token).first()


def credentials_for(user: AbstractBaseUser) -> QuerySet[AgentCredential]:
    """A card holder sees their own device credentials; nobody else sees any."""
    who = principal(user)
    if not who.is_citizen or who.user_id is None:  # a citizen always has a user id
        return AgentCredential.objects.none()
    return AgentCredential.objects.filter(user_id=who.user_id)
