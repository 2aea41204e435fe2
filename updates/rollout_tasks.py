"""Celery tasks of rollouts: thin wrappers over :mod:`updates.rollouts`.

Both are idempotent (an evaluation decides from the database state under the rollout's row lock)
and ``acks_late``: a worker lost mid-task gets the message delivered again, with the same effect.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from updates import rollouts

TRANSIENT = (OperationalError, InterfaceError, ConnectionError)


@shared_task(
    name="updates.rollouts_tick",
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    max_retries=5,
)
def rollouts_tick() -> int:
    """Celery beat: start scheduled rollouts, retry due cards, advance groups, pause at thresholds."""
    return rollouts.tick()


@shared_task(
    name="updates.evaluate_rollout",
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    max_retries=8,
)
def evaluate_rollout(rollout_id: int) -> str:
    """Evaluate one rollout now (queued after a card result or a large group's activation)."""
    return rollouts.evaluate_rollout(rollout_id)


@shared_task(name="updates.email_rollout_work", ignore_result=True, autoretry_for=TRANSIENT, max_retries=3)
def email_rollout_work(rollout_id: int, job_ids: list[int]) -> int:
    """Tell the holders of the cards a rollout just gave work (``rollouts.dispatch``, after commit)."""
    return rollouts.email_dispatched_work(rollout_id, job_ids)
