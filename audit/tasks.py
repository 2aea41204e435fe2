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
