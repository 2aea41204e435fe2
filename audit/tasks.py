"""Celery tasks of the audit app (thin: the work is in :mod:`audit.services`)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from audit import security, services


@shared_task(name="audit.tasks.make_checkpoint")
def make_checkpoint() -> dict[str, object]:
    """Sign the current tree head (Celery beat, every ``ECARD_AUDIT_CHECKPOINT_SECONDS``).

    Idempotent: when the log has not grown since the last checkpoint, nothing new is signed.
    """
    checkpoint, created = services.ensure_checkpoint()
    return {"size": checkpoint.size, "created": created}


@shared_task(name="audit.tasks.sequence")
def sequence() -> dict[str, int]:
    """Sequence the committed pending entries (Celery beat, every ``ECARD_AUDIT_SEQUENCE_SECONDS``).

    Appending transactions already sequence right after they commit; this catches what they left
    (a commit that found the sequencer busy, a process that died between commit and sequencing).
    """
    return {"sequenced": services.sequence_pending(limit=services.sequence_batch_size())}


@shared_task(name="audit.tasks.purge_security_events")
def purge_security_events() -> dict[str, int]:
    """Delete security events past ``ECARD_SECURITY_EVENT_RETENTION_DAYS`` (Celery beat, hourly)."""
    return {"deleted": security.purge()}


@shared_task(bind=True, name="audit.tasks.push_checkpoint")
def push_checkpoint(self: Any, size: int | None = None) -> dict[str, str]:
    """Send a checkpoint (default: the latest) to the configured witnesses and store their cosignatures.

    Queued when a checkpoint is signed and run by beat every ``ECARD_AUDIT_WITNESS_SECONDS`` (the
    latest, to witnesses that have not cosigned it). Idempotent: a stored cosignature is not asked
    for again. While a witness is unreachable the task retries with backoff (with a broker; in the
    in-process default, beat and the next checkpoint retry instead of blocking the caller).
    """
    results, unavailable = services.push_to_witnesses(size)
    if unavailable and not self.request.is_eager:
        retries = int(getattr(settings, "ECARD_WITNESS_RETRIES", 8))
        if self.request.retries < retries:
            raise self.retry(countdown=min(300, 5 * 2**self.request.retries), max_retries=retries)
    return results
