"""Read operations of the updates app."""

from __future__ import annotations

from updates.models import WorkerHeartbeat


def heartbeat_for(token: str) -> WorkerHeartbeat | None:
    return WorkerHeartbeat.objects.filter(token=token).first()
