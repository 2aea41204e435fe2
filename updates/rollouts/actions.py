"""Operator actions on a rollout: create (plan), approve, start, pause, resume, cancel."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from ecard.errors import ServiceError
from issuers.models import Organization
from issuers.services import validate_default_applets
from updates import release_gate
from updates.models import Release
from updates.rollout_models import Rollout, RolloutGroup, RolloutTarget
from updates.rollouts import lifecycle
from updates.rollouts.common import _audit, _can_operate, _locked
from updates.rollouts.dispatch import (
    MAX_LISTED_CARDS,
    _dispatch_ready,
    _matching_cins,
    _recount,
    _running_group_ids,
    _withdraw_pending_jobs,
    plan_targets,
)
from updates.rollouts.groups import Bound, parse_groups
from updates.rollouts.lifecycle import Action
from updates.rollouts.progress import _begin, _evaluate, _pause


@transaction.atomic
def create_rollout(
    *,
    bank: Organization,
    release: Release,
    actor: User | None,
    groups: Any,
    from_version: str = "",
    cins: list[str] | None = None,
    success_threshold: int = 100,
    error_threshold: int = 20,
    retry_count: int = 2,
    retry_backoff: int = 300,
    require_approval: bool = False,
    start_at: dt.datetime | None = None,
    name: str = "",
) -> Rollout:
    """Plan a rollout of ``release`` over the bank's cards that carry its package (at ``from_version``,
    or any other version), or over the listed cards; targets are written in one statement."""
    if actor is not None:
        _can_operate(actor, bank)
    if release.bank_id != bank.pk:
        raise ServiceError("no such release", field="release", code="not_found")
    if release.state == Release.State.REVOKED:  # withdrawn for good: not a conflict that can clear (400)
        raise ServiceError(
            f"release {release.package_aid} v{release.package_version} is {release.state}", field="release"
        )
    release_gate.require_deployable(release)  # approved by the agency, signed as the cards check (409)
    bounds = parse_groups(groups)
    _check_numbers(success_threshold, error_threshold, retry_count, retry_backoff)
    if from_version and not re.fullmatch(r"\d{1,3}\.\d{1,3}", from_version):
        raise ServiceError("from_version is major.minor, e.g. 1.0", field="from_version")
    if from_version == release.package_version:
        raise ServiceError(f"the cards would already be at version {from_version}", field="from_version")
    cins = _listed(cins, "target by package version instead")
    rollout = _new_rollout(
        bank=bank,
        release=release,
        package_aid=release.package_aid,
        actor=actor,
        bounds=bounds,
        name=name,
        from_version=from_version,
        target_kind=Rollout.Target.CARDS if cins is not None else Rollout.Target.PACKAGE,
        success_threshold=success_threshold,
        error_threshold=error_threshold,
        retry_count=retry_count,
        retry_backoff=retry_backoff,
        require_approval=require_approval,
        start_at=start_at,
    )
    total = _plan(
        rollout,
        bounds,
        cins,
        lambda: (
            f"carry {release.package_aid}{' v' + from_version if from_version else ' at another version'} in "
            f"{bank.name}'s active security domain on a SECURED card"
        ),
        f"no card carries {release.package_aid}{' v' + from_version if from_version else ''} "
        f"in {bank.name}'s security domain",
        empty_field="from_version",
    )
    _audit(
        rollout,
        "rollout.created",
        actor,
        to_version=release.package_version,
        from_version=from_version or None,
        targets=total,
        groups=rollout.group_spec,
        listed=cins is not None,
    )
    return rollout


def _check_numbers(success_threshold: int, error_threshold: int, retry_count: int, retry_backoff: int) -> None:
    for label, value, low in (("success_threshold", success_threshold, 1), ("error_threshold", error_threshold, 1)):
        if not isinstance(value, int) or not low <= value <= 100:
            raise ServiceError(f"{label} is a percentage from {low} to 100", field=label)
    if not 0 <= retry_count <= 10:
        raise ServiceError("retry_count is 0 to 10", field="retry_count")
    if not 0 <= retry_backoff <= 7 * 86400:
        raise ServiceError("retry_backoff is 0 to 604800 seconds", field="retry_backoff")


def _listed(cins: list[str] | None, instead: str = "target all cards instead") -> list[str] | None:
    if cins is None:
        return None
    cins = sorted({c.strip().upper() for c in cins if c and c.strip()})
    if not cins:
        raise ServiceError("the card list is empty", field="cins")
    if len(cins) > MAX_LISTED_CARDS:
        raise ServiceError(f"at most {MAX_LISTED_CARDS} listed cards; {instead}", field="cins")
    return cins


def _new_rollout(
    *, bank: Organization, actor: User | None, bounds: list[Bound], package_aid: str, **fields: Any
) -> Rollout:
    """The rollout row and its groups; one open rollout per package of a bank (a key rotation: per bank)."""
    busy = Rollout.objects.filter(bank=bank, package_aid=package_aid, state__in=Rollout.OPEN_STATES).first()
    what = package_aid or "the keys"
    if busy is not None:
        raise ServiceError(f"rollout {busy.pk} of {what} is still {busy.state}", code="conflict")
    require_approval = bool(fields.get("require_approval"))
    try:
        with transaction.atomic():  # the partial unique constraint settles a race between two creates
            rollout = Rollout.objects.create(
                bank=bank,
                package_aid=package_aid,
                group_spec=[b.text for b in bounds],
                state=Rollout.State.AWAITING_APPROVAL if require_approval else Rollout.State.READY,
                created_by=actor if actor is not None and getattr(actor, "pk", None) else None,
                **{**fields, "name": str(fields.get("name") or "")[:200]},
            )
    except IntegrityError as exc:
        raise ServiceError(f"another rollout of {what} is open", code="conflict") from exc
    return rollout


def _plan(
    rollout: Rollout,
    bounds: list[Bound],
    cins: list[str] | None,
    listed_rule: Callable[[], str],
    empty_message: str,
    *,
    empty_field: str,
) -> int:
    """Write the groups and the targets (one statement); refuse listed cards that do not qualify,
    or a rollout without a card."""
    group_rows = RolloutGroup.objects.bulk_create(
        [RolloutGroup(rollout=rollout, index=i + 1, bound=b.text) for i, b in enumerate(bounds)]
    )
    if not all(g.pk for g in group_rows):  # backends that do not return ids from bulk inserts
        group_rows = list(rollout.groups.order_by("index"))
    if cins is not None:
        matched = set(_matching_cins(rollout, cins))
        missing = [c for c in cins if c not in matched]
        if missing:
            shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
            raise ServiceError(f"{len(missing)} of the listed cards do not {listed_rule()}: {shown}", field="cins")
    total = plan_targets(rollout, bounds, [g.pk for g in group_rows], cins)
    if total == 0:
        raise ServiceError(empty_message, field=empty_field)
    rollout.total = total
    rollout.save(update_fields=["total", "updated_at"])
    _recount(rollout)
    return total


@transaction.atomic
def create_install_rollout(
    *,
    bank: Organization,
    release: Release,
    actor: User | None,
    instances: Any,
    groups: Any,
    cins: list[str] | None = None,
    success_threshold: int = 100,
    error_threshold: int = 20,
    retry_count: int = 2,
    retry_backoff: int = 300,
    require_approval: bool = False,
    start_at: dt.datetime | None = None,
    name: str = "",
) -> Rollout:
    """An install campaign (issue 18): load ``release``'s package and install ``instances`` on the
    bank's enrolled cards that do not carry the package (all of them, or the listed ones), in waves.

    ``instances``: ``[{"instance_aid", "privileges", "install_params"[, "module_aid"]}]``, checked by
    the rules of the SSD template's default applets (AID range, application privileges, bounded hex).
    Each card gets an ``update_applet`` job whose ``packages`` entry names the release, the instance
    AIDs and (``install``) these specifications."""
    if actor is not None:
        _can_operate(actor, bank)
    if release.bank_id != bank.pk:
        raise ServiceError("no such release", field="release", code="not_found")
    if release.state != Release.State.APPROVED:
        raise ServiceError(
            f"release {release.package_aid} v{release.package_version} is {release.state}", field="release"
        )
    specs = _instance_specs(bank, release, instances)
    install = [{k: spec[k] for k in ("instance_aid", "module_aid", "privileges", "install_params")} for spec in specs]
    bounds = parse_groups(groups)
    _check_numbers(success_threshold, error_threshold, retry_count, retry_backoff)
    cins = _listed(cins)
    rollout = _new_rollout(
        bank=bank,
        release=release,
        package_aid=release.package_aid,
        actor=actor,
        bounds=bounds,
        name=name,
        target_kind=Rollout.Target.INSTALL,
        install_instances=install,
        success_threshold=success_threshold,
        error_threshold=error_threshold,
        retry_count=retry_count,
        retry_backoff=retry_backoff,
        require_approval=require_approval,
        start_at=start_at,
    )
    total = _plan(
        rollout,
        bounds,
        cins,
        lambda: f"carry {bank.name}'s active, unlocked security domain without {release.package_aid} on a SECURED card",
        f"every enrolled card of {bank.name} already carries {release.package_aid} "
        "(or has one of its instance AIDs taken)",
        empty_field="release",
    )
    _audit(
        rollout,
        "rollout.created",
        actor,
        kind="install",
        to_version=release.package_version,
        instances=[spec["instance_aid"] for spec in install],
        targets=total,
        groups=rollout.group_spec,
        listed=cins is not None,
    )
    return rollout


MAX_INSTALL_INSTANCES = 8


def _instance_specs(bank: Organization, release: Release, instances: Any) -> list[dict[str, Any]]:
    """The install campaign's instances, each checked by the rules of a default applet."""
    if not isinstance(instances, list | tuple) or not instances:
        raise ServiceError("name at least one instance to install", field="instances")
    if len(instances) > MAX_INSTALL_INSTANCES:
        raise ServiceError(f"at most {MAX_INSTALL_INSTANCES} instances", field="instances")
    specs: list[dict[str, Any]] = []
    for n, instance in enumerate(instances, start=1):
        if not isinstance(instance, dict):
            raise ServiceError(f"instance {n}: an object with an instance_aid", field="instances")
        try:
            (spec,) = validate_default_applets(bank, [{**instance, "release_id": release.pk}])
        except ServiceError as exc:
            raise ServiceError(exc.message.replace("applet 1", f"instance {n}", 1), field="instances") from None
        if any(s["instance_aid"] == spec["instance_aid"] for s in specs):
            raise ServiceError(f"instance {n}: {spec['instance_aid']} is listed twice", field="instances")
        specs.append(spec)
    return specs


@transaction.atomic
def create_rotation_rollout(
    *,
    bank: Organization,
    actor: User | None,
    groups: Any,
    success_threshold: int = 100,
    error_threshold: int = 20,
    retry_count: int = 2,
    retry_backoff: int = 300,
    require_approval: bool = False,
    start_at: dt.datetime | None = None,
    name: str = "",
) -> Rollout:
    """Rotate the keys of every active, unlocked security domain of the bank (keyed, no rotation
    pending), in waves: each card gets the ``rotate_keys`` job ``cards.services.request_key_rotation``
    would queue (PUT KEY of the next key version, generated in custody or at the bank's key service)."""
    if actor is not None:
        _can_operate(actor, bank)
    bounds = parse_groups(groups)
    _check_numbers(success_threshold, error_threshold, retry_count, retry_backoff)
    rollout = _new_rollout(
        bank=bank,
        release=None,
        package_aid="",
        actor=actor,
        bounds=bounds,
        name=name,
        target_kind=Rollout.Target.ROTATE,
        success_threshold=success_threshold,
        error_threshold=error_threshold,
        retry_count=retry_count,
        retry_backoff=retry_backoff,
        require_approval=require_approval,
        start_at=start_at,
    )
    total = _plan(
        rollout,
        bounds,
        None,
        lambda: "",
        f"{bank.name} has no active, unlocked security domain to rotate (or every one has a rotation pending)",
        empty_field="groups",
    )
    _audit(rollout, "rollout.created", actor, kind="rotate", targets=total, groups=rollout.group_spec)
    return rollout


@transaction.atomic
def approve_rollout(*, rollout: Rollout, actor: User) -> Rollout:
    rollout = _locked(rollout)
    _can_operate(actor, rollout.bank)
    lifecycle.require(rollout.state, Action.APPROVE)
    if rollout.created_by_id == actor.pk:
        raise ServiceError("four eyes: a different user of the bank must approve", code="forbidden")
    lifecycle.move(rollout, Action.APPROVE, Rollout.State.READY)
    rollout.approved_by = actor
    rollout.approved_at = timezone.now()
    rollout.save(update_fields=["state", "approved_by", "approved_at", "updated_at"])
    _audit(rollout, "rollout.approved", actor)
    return rollout


@transaction.atomic
def start_rollout(*, rollout: Rollout, actor: AbstractBaseUser | None) -> Rollout:
    rollout = _locked(rollout)
    if actor is not None:
        _can_operate(actor, rollout.bank)
    lifecycle.require(rollout.state, Action.START)
    if rollout.release is not None and rollout.release.state != Release.State.APPROVED:
        raise ServiceError(f"the release is {rollout.release.state}", code="state")
    if rollout.release is not None:
        release_gate.require_deployable(rollout.release)
    now = timezone.now()
    if rollout.start_at is not None and rollout.start_at > now:
        lifecycle.move(rollout, Action.START, Rollout.State.SCHEDULED)
        rollout.save(update_fields=["state", "updated_at"])
        _audit(rollout, "rollout.scheduled", actor, start_at=rollout.start_at.isoformat())
        return rollout
    _begin(rollout, Action.START, now, actor)
    return rollout


@transaction.atomic
def pause_rollout(*, rollout: Rollout, actor: AbstractBaseUser | None, reason: str = "") -> Rollout:
    rollout = _locked(rollout)
    if actor is not None:
        _can_operate(actor, rollout.bank)
    lifecycle.require(rollout.state, Action.PAUSE)
    _pause(rollout, timezone.now(), actor, reason or "paused by an operator")
    return rollout


@transaction.atomic
def resume_rollout(*, rollout: Rollout, actor: AbstractBaseUser | None) -> Rollout:
    """Continue a paused rollout: cards withdrawn at the pause get their jobs again and failed
    cards of the running groups are retried now, with a fresh retry budget."""
    rollout = _locked(rollout)
    if actor is not None:
        _can_operate(actor, rollout.bank)
    lifecycle.require(rollout.state, Action.RESUME)
    if rollout.release is not None and rollout.release.state != Release.State.APPROVED:
        raise ServiceError(f"the release is {rollout.release.state}; cancel the rollout", code="state")
    if rollout.release is not None:
        release_gate.require_deployable(rollout.release)
    now = timezone.now()
    lifecycle.move(rollout, Action.RESUME, Rollout.State.RUNNING if rollout.started_at else Rollout.State.SCHEDULED)
    rollout.pause_reason = ""
    rollout.save(update_fields=["state", "pause_reason", "updated_at"])
    # A group that finished with failed cards (paused below its success threshold) runs again.
    reopened = RolloutGroup.objects.filter(rollout=rollout, state=RolloutGroup.State.DONE, failed__gt=0).update(
        state=RolloutGroup.State.RUNNING, finished_at=None
    )
    group_ids = _running_group_ids(rollout)
    requeued = RolloutTarget.objects.filter(
        rollout=rollout, group_id__in=group_ids, status=RolloutTarget.Status.FAILED
    ).update(retries=0, next_retry_at=now, updated_at=now)
    _audit(rollout, "rollout.resumed", actor, failed_retried=requeued, groups_reopened=reopened)
    if rollout.state == Rollout.State.RUNNING:
        _dispatch_ready(rollout, now, group_ids)
        _evaluate(rollout, now, inline=False)
    return rollout


@transaction.atomic
def cancel_rollout(*, rollout: Rollout, actor: AbstractBaseUser | None, reason: str = "") -> Rollout:
    """Stop for good: jobs not yet begun on a card are cancelled, jobs a card already started
    finish (their results are still recorded), cards not reached are cancelled."""
    rollout = _locked(rollout)
    if actor is not None:
        _can_operate(actor, rollout.bank)
    lifecycle.require(rollout.state, Action.CANCEL)
    now = timezone.now()
    lifecycle.move(rollout, Action.CANCEL, Rollout.State.CANCELLED)
    rollout.finished_at = now
    rollout.save(update_fields=["state", "finished_at", "updated_at"])
    withdrawn = _withdraw_pending_jobs(rollout, RolloutTarget.Status.CANCELLED, now)
    unreached = RolloutTarget.objects.filter(rollout=rollout, status=RolloutTarget.Status.PENDING).update(
        status=RolloutTarget.Status.CANCELLED, updated_at=now
    )
    RolloutTarget.objects.filter(rollout=rollout, status=RolloutTarget.Status.FAILED).update(next_retry_at=None)
    _recount(rollout)
    _audit(rollout, "rollout.cancelled", actor, reason=reason, jobs_cancelled=withdrawn, cards_not_reached=unreached)
    return rollout


def pause_rollouts_of_release(release: Release, reason: str) -> int:
    """A revoked release: its open rollouts stop dispatching (inside the revocation's transaction)."""
    count = 0
    for rollout_id in Rollout.objects.filter(
        release=release, state__in=(Rollout.State.RUNNING, Rollout.State.SCHEDULED)
    ).values_list("pk", flat=True):
        rollout = _locked(rollout_id)
        _pause(rollout, timezone.now(), None, reason)
        count += 1
    return count
