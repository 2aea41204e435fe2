"""Celery tasks of the updates app: thin wrappers over services.

Every task is idempotent and ``acks_late`` (settings: ``CELERY_TASK_ACKS_LATE``,
``CELERY_TASK_REJECT_ON_WORKER_LOST``): a worker killed mid-task leaves the message unacknowledged,
the broker delivers it again, and running it twice has the effect of running it once. Retries
with backoff only for transient errors (database or broker unavailable), never for logic errors.
"""

from __future__ import annotations

import socket

from celery import shared_task
from django.db import InterfaceError, OperationalError

from updates import services

TRANSIENT = (OperationalError, InterfaceError, ConnectionError)


@shared_task(name="updates.record_worker_heartbeat", acks_late=True)
def record_worker_heartbeat(token: str) -> str:
    """Write a heartbeat row from whichever process runs the task; returns that process's host name."""
    hostname = socket.gethostname()
    services.record_worker_heartbeat(token=token, hostname=hostname)
    return hostname


@shared_task(
    name="updates.prepare_job",
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
)
def prepare_job(job_id: int) -> bool:
    """Prepare a card job's keys before the card is presented (idempotent)."""
    return services.prepare_job(job_id)


@shared_task(name="updates.expire_idle_sessions", acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2)
def expire_idle_sessions() -> int:
    """Close relay sessions idle past their deadline; their jobs resume at the next presentation."""
    return services.expire_idle_sessions()


from updates.renewal_tasks import warn_cards_nearing_expiry  # noqa: E402,F401 - autodiscovery
from updates.rollout_tasks import evaluate_rollout, rollouts_tick  # noqa: E402,F401 - autodiscovery
