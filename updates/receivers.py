"""Signal receivers of the updates app (connected in ``updates.apps.UpdatesConfig.ready``).

* ``cards.signals.job_queued``: ``cards`` sits below ``updates`` (docs/ARCHITECTURE.md, "Layers"):
  its services queue a card job and send the signal; the app that runs jobs schedules their
  preparation.
* ``updates.signals.job_state_changed``: rollout jobs report back to their rollout, repair jobs
  to their repair.
* ``post_save`` of an organisation or a user: a suspended organisation's terminals and a
  deactivated user's devices are dropped from the credential cache, so they are refused at once;
  ``post_delete`` of a credential (a deleted user's devices go with the user) drops it too.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from cards.models import CardJob
from issuers.models import Organization
from updates import repair, services
from updates.models import AgentCredential
from updates.rollouts import record_card_result
from updates.tasks import prepare_job

# Jobs whose keys are generated in custody ahead of the card's presentation (updates.services.prepare_job).
KINDS_PREPARED_AHEAD = frozenset({CardJob.Kind.ENROLL_BANK, CardJob.Kind.ROTATE_KEYS})


def prepare_queued_job(sender: Any, job: CardJob, **kwargs: Any) -> None:
    """Queue the job's preparation task once the transaction that queued the job commits."""
    if job.kind not in KINDS_PREPARED_AHEAD:
        return
    job_id = job.pk
    transaction.on_commit(lambda: prepare_job.delay(job_id))


def report_rollout_job(sender: Any, job: CardJob, state: str, error: str = "", **kwargs: Any) -> None:
    """A rollout's job finished, failed or went back to pending: the rollout records it (same transaction)."""
    if "rollout_target" not in (job.params or {}):
        return
    record_card_result(job=job, state=state, error=error)


def report_repair_job(sender: Any, job: CardJob, state: str, error: str = "", **kwargs: Any) -> None:
    """A repair's job finished or failed: the repair follows (same transaction, updates.repair)."""
    if "repair" not in (job.params or {}):
        return
    repair.job_changed(job, state, error)


def report_cancelled_jobs(sender: Any, jobs: list[CardJob], reason: str, **kwargs: Any) -> None:
    """Jobs cancelled in bulk (a card replaced): their rollout targets and repairs hear of it."""
    for job in jobs:
        report_rollout_job(sender, job=job, state=CardJob.State.CANCELLED, error=reason)
        report_repair_job(sender, job=job, state=CardJob.State.CANCELLED, error=reason)


def forget_suspended_organization(sender: Any, instance: Organization, **kwargs: Any) -> None:
    """A suspended organisation's terminal credentials are refused from now on (not after the
    cache's TTL), and their open sessions are rejected (``organization.suspended`` records it)."""
    if not instance.is_active:
        services.forget_organization_credentials(instance.pk)
        services.close_terminal_sessions(instance.pk, "the terminal's organisation is suspended")


def forget_deactivated_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A deactivated user's device credentials are refused from now on (not after the cache's TTL)."""
    if not instance.is_active and instance.pk is not None:
        services.forget_user_credentials(instance.pk)


def forget_deleted_credential(sender: Any, instance: AgentCredential, **kwargs: Any) -> None:
    """A deleted credential is never accepted from the cache (its sessions could not be stored)."""
    services.forget_credentials([instance.key_id])
