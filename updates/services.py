"""Write operations of the updates app (the only place that changes its models)."""

from __future__ import annotations

from django.db import transaction

from updates.models import WorkerHeartbeat


@transaction.atomic
def record_worker_heartbeat(*, token: str, hostname: str) -> WorkerHeartbeat:
    """Record that a worker ran; idempotent per token (a redelivered task writes once)."""
    heartbeat, _created = WorkerHeartbeat.objects.get_or_create(token=token, defaults={"hostname": hostname})
    return heartbeat
