"""Writes to the audit log. Every state-changing service calls :func:`record_event` inside its
own transaction, so the change and its entry commit (or roll back) together."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from audit.models import AuditEntry


def record_event(
    *,
    action: str,
    subject_type: str,
    subject_id: str | int,
    actor: Any = None,
    actor_org: Any = None,
    organization: Any = None,
    card_cin: str = "",
    outcome: str = AuditEntry.Outcome.SUCCESS,
    reason: str = "",
    receipt: bytes | None = None,
    details: dict[str, Any] | None = None,
    actor_type: str | None = None,
) -> AuditEntry:
    """Append one entry. ``actor`` is a user (or None for the system); ``organization`` the org the
    event concerns. ``details`` must hold no key material and no personal data."""
    if not connection.in_atomic_block:
        raise RuntimeError("record_event must run inside the transaction of the change it records")
    with transaction.atomic():
        last = AuditEntry.objects.select_for_update().order_by("-index").first()
        next_index = 0 if last is None else last.index + 1
        if last is None:
            # Empty table: still serialise concurrent first appends through the unique index.
            next_index = (AuditEntry.objects.aggregate(m=Max("index"))["m"] or -1) + 1
        if actor_type is None:
            actor_type = AuditEntry.ActorType.USER if actor is not None else AuditEntry.ActorType.SYSTEM
        return AuditEntry.objects.create(
            index=next_index,
            time=timezone.now(),
            actor_type=actor_type,
            actor_user=actor if actor is not None and getattr(actor, "pk", None) else None,
            actor_name=actor.get_username() if actor is not None and hasattr(actor, "get_username") else "",
            actor_org=actor_org,
            actor_org_slug=getattr(actor_org, "slug", "") or "",
            action=action,
            subject_type=subject_type,
            subject_id=str(subject_id),
            card_cin=card_cin,
            organization_slug=getattr(organization, "slug", "") or "",
            outcome=outcome,
            reason=reason,
            receipt=receipt.hex().upper() if receipt else "",
            details=details or {},
        )
