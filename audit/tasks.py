"""Celery tasks of the audit app (thin: the work is in :mod:`audit.services`)."""

from __future__ import annotations

from celery import shared_task

from audit import services


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
    from audit import security

    return {"deleted": security.purge()}
