"""Progress of a running rollout: per-card results from the OTA engine, and the evaluation that
starts scheduled rollouts, retries cards, advances groups, pauses at thresholds and completes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.services import record_event
from cards.models import CardJob
from updates.policy import ROLLOUT_INACTIVE as POLICY_INACTIVE
from updates.rollout_models import Rollout, RolloutGroup, RolloutTarget
from updates.rollouts import lifecycle
from updates.rollouts.common import _audit, _locked
from updates.rollouts.dispatch import _activate_group, _dispatch_ready, _recount, _withdraw_pending_jobs
from updates.rollouts.lifecycle import Action


def _begin(rollout: Rollout, action: Action, now: dt.datetime, actor: Any) -> None:
    """``action`` is START (an operator, from ready) or BEGIN (the scheduled start time came)."""
    lifecycle.move(rollout, action, Rollout.State.RUNNING)
    rollout.started_at = now
    rollout.save(update_fields=["state", "started_at", "updated_at"])
    _audit(rollout, "rollout.started", actor, targets=rollout.total)
    first = rollout.groups.order_by("index").first()
    if first is not None:
        _activate_group(rollout, first, now, actor, inline=True)
    _evaluate(rollout, now, inline=True)  # a large first group is dispatched by the task


def _pause(rollout: Rollout, now: dt.datetime, actor: Any, reason: str) -> None:
    lifecycle.move(rollout, Action.PAUSE, Rollout.State.PAUSED)
    rollout.pause_reason = reason[:2000]
    rollout.save(update_fields=["state", "pause_reason", "updated_at"])
    withdrawn = _withdraw_pending_jobs(rollout, RolloutTarget.Status.PENDING, now)
    _recount(rollout)
    _audit(rollout, "rollout.paused", actor, reason=reason, jobs_withdrawn=withdrawn, automatic=actor is None)


def record_card_result(*, job: CardJob, state: str, error: str) -> None:
    """The engine moved a rollout job to done, failed, or pending after a failed attempt (signal
    handler, inside the engine's transaction): the card's status, its group's counters, and an
    immediate evaluation of the rollout."""
    rollout_id = job.params.get("rollout")
    if rollout_id is None:
        return
    rollout = (
        Rollout.objects.select_for_update(of=("self",)).select_related("bank", "release").filter(pk=rollout_id).first()
    )
    if rollout is None:
        return
    target = RolloutTarget.objects.select_for_update().filter(pk=job.params["rollout_target"], job_id=job.pk).first()
    if target is None or target.status != RolloutTarget.Status.RUNNING:
        return  # a job the rollout no longer counts (superseded)
    now = timezone.now()
    if state == CardJob.State.DONE:
        status, target.last_error, target.next_retry_at = RolloutTarget.Status.SUCCEEDED, "", None
    elif POLICY_INACTIVE in error and rollout.state in (Rollout.State.PAUSED, Rollout.State.CANCELLED):
        # Refused before it touched the card because the rollout stopped: not a failure of the card.
        status = (
            RolloutTarget.Status.CANCELLED
            if rollout.state == Rollout.State.CANCELLED
            else (RolloutTarget.Status.PENDING)
        )
        target.last_error = error[:2000]
    elif state in (CardJob.State.FAILED, CardJob.State.PENDING):
        status = RolloutTarget.Status.FAILED
        target.last_error = error[:2000]
        if state == CardJob.State.PENDING:
            # The rollout owns retries (count, backoff): this attempt's job ends here.
            CardJob.objects.filter(pk=job.pk, state=CardJob.State.PENDING).update(
                state=CardJob.State.FAILED, finished_at=now, last_error=f"{error} (rollout {rollout.pk} retries)"[:2000]
            )
        can_retry = rollout.state not in (Rollout.State.CANCELLED, Rollout.State.COMPLETED)
        if target.retries < rollout.retry_count and can_retry:
            target.next_retry_at = now + dt.timedelta(seconds=rollout.retry_backoff * (2**target.retries))
        else:
            target.next_retry_at = None
    elif state == CardJob.State.CANCELLED:
        # The card was replaced (cards.lifecycle): the card is gone from the rollout, not failed.
        status, target.last_error, target.next_retry_at = RolloutTarget.Status.CANCELLED, error[:2000], None
    else:
        return
    target.status = status
    target.updated_at = now
    target.save(update_fields=["status", "last_error", "next_retry_at", "updated_at"])
    counter = str(status)  # the group's counter field is named after the status value
    RolloutGroup.objects.filter(pk=target.group_id).update(running=F("running") - 1, **{counter: F(counter) + 1})
    record_event(
        action="rollout.card_result",
        subject_type="rollout",
        subject_id=rollout.pk,
        card_cin=job.card.cin,
        organization=rollout.bank,
        outcome="success" if status == RolloutTarget.Status.SUCCEEDED else "failure",
        reason=target.last_error,
        actor_type="agent",
        details={
            "job": job.pk,
            "status": status,
            "attempt": target.attempts,
            "retry_at": target.next_retry_at.isoformat() if target.next_retry_at else None,
        },
    )
    _evaluate(rollout, now, inline=True)


def _evaluate(rollout: Rollout, now: dt.datetime, *, inline: bool) -> None:
    """Start a scheduled rollout whose time came; pause at a group's error threshold; retry due
    cards; start the next group when the latest reached its success threshold; finish groups and
    the rollout. The rollout row is locked by the caller."""
    if rollout.state == Rollout.State.SCHEDULED and (rollout.start_at is None or rollout.start_at <= now):
        _begin(rollout, Action.BEGIN, now, None)
        return
    if rollout.state != Rollout.State.RUNNING:
        return
    groups = list(rollout.groups.order_by("index"))
    for group in groups:
        if (
            group.state == RolloutGroup.State.RUNNING
            and group.failed
            and (group.failed * 100 >= rollout.error_threshold * group.total)
        ):
            _pause(
                rollout,
                now,
                None,
                f"group {group.index}: {group.failed} of {group.total} cards failed "
                f"(error threshold {rollout.error_threshold}%)",
            )
            return
    if (not inline or _has_due_retries(rollout, now)) and _dispatch_ready(rollout, now):
        groups = list(rollout.groups.order_by("index"))
    for group in groups:
        if (
            group.state == RolloutGroup.State.RUNNING
            and group.pending == 0
            and group.running == 0
            and not (
                RolloutTarget.objects.filter(
                    group=group, status=RolloutTarget.Status.FAILED, next_retry_at__isnull=False
                ).exists()
            )
        ):
            group.state = RolloutGroup.State.DONE
            group.finished_at = now
            group.save(update_fields=["state", "finished_at"])
            _audit(
                rollout,
                "rollout.group_done",
                None,
                group=group.index,
                succeeded=group.succeeded,
                failed=group.failed,
                cancelled=group.cancelled,
            )
    started = [g for g in groups if g.state != RolloutGroup.State.WAITING]
    waiting = [g for g in groups if g.state == RolloutGroup.State.WAITING]
    latest = started[-1] if started else None
    if latest is not None and latest.advanced_at is None:
        met = latest.succeeded * 100 >= rollout.success_threshold * latest.total
        if met and waiting:
            latest.advanced_at = now
            latest.save(update_fields=["advanced_at"])
            _activate_group(rollout, waiting[0], now, None, inline=inline)
            _evaluate(rollout, now, inline=inline)  # an empty or instantly successful group advances too
            return
        if not met and latest.state == RolloutGroup.State.DONE:
            _pause(
                rollout,
                now,
                None,
                f"group {latest.index} finished with {latest.succeeded} of {latest.total} cards succeeded "
                f"(success threshold {rollout.success_threshold}%)",
            )
            return
    if groups and all(g.state == RolloutGroup.State.DONE for g in groups):
        lifecycle.move(rollout, Action.COMPLETE, Rollout.State.COMPLETED)
        rollout.finished_at = now
        rollout.save(update_fields=["state", "finished_at", "updated_at"])
        totals = {s: sum(getattr(g, s) for g in groups) for s in ("succeeded", "failed", "cancelled")}
        _audit(rollout, "rollout.completed", None, **totals)


def _has_due_retries(rollout: Rollout, now: dt.datetime) -> bool:
    return RolloutTarget.objects.filter(
        rollout=rollout, status=RolloutTarget.Status.FAILED, next_retry_at__lte=now
    ).exists()


def evaluate_rollout(rollout_id: int) -> str:
    """Idempotent evaluation of one rollout (Celery)."""
    with transaction.atomic():
        if not Rollout.objects.filter(pk=rollout_id).exists():
            return "gone"
        rollout = _locked(rollout_id)
        _evaluate(rollout, timezone.now(), inline=False)
        return rollout.state


def tick() -> int:
    """Celery beat: evaluate every scheduled or running rollout (start times, retries, advancement)."""
    ids = list(
        Rollout.objects.filter(state__in=(Rollout.State.SCHEDULED, Rollout.State.RUNNING)).values_list("pk", flat=True)
    )
    for rollout_id in ids:
        evaluate_rollout(rollout_id)
    return len(ids)
