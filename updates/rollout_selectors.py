"""Reads of releases and rollouts, scoped to what the caller may see.

A bank's members see their bank's releases and rollouts; the agency and regulators see all of
them (read only); anyone else sees none. Outside the scope an object is a 404, never a 403.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, QuerySet, Sum

from issuers.roles import principal
from issuers.services import ReleaseFacts
from updates.models import Release
from updates.rollout_models import CardNotice, Rollout, RolloutTarget

COUNTERS = ("pending", "running", "succeeded", "failed", "cancelled")


def releases_for(user: AbstractBaseUser) -> QuerySet[Release]:
    who = principal(user)
    qs = Release.objects.select_related("bank", "created_by").defer("cap_file")
    if who.is_agency or who.is_regulator:
        return qs
    if who.bank_ids:
        return qs.filter(bank_id__in=who.bank_ids)
    return qs.none()


def rollouts_for(user: AbstractBaseUser) -> QuerySet[Rollout]:
    who = principal(user)
    qs = Rollout.objects.select_related("bank", "release", "created_by", "approved_by").prefetch_related("groups")
    if who.is_agency or who.is_regulator:
        return qs
    if who.bank_ids:
        return qs.filter(bank_id__in=who.bank_ids)
    return qs.none()


def progress(rollout: Rollout) -> dict[str, Any]:
    """Counts per group and overall, from the group counters (kept in step with the targets)."""
    groups = sorted(rollout.groups.all(), key=lambda g: g.index)  # prefetched by rollouts_for
    overall = {name: sum(getattr(g, name) for g in groups) for name in ("total", *COUNTERS)}
    done = overall["succeeded"] + overall["failed"] + overall["cancelled"]
    overall["percent_done"] = round(100 * done / overall["total"], 1) if overall["total"] else 0.0
    return {
        "overall": overall,
        "groups": [
            {
                "index": g.index,
                "bound": g.bound,
                "state": g.state,
                "total": g.total,
                **{name: getattr(g, name) for name in COUNTERS},
                "started_at": g.started_at,
                "advanced_at": g.advanced_at,
                "finished_at": g.finished_at,
            }
            for g in groups
        ],
    }


def targets_of(rollout: Rollout, status: str | None = None) -> QuerySet[RolloutTarget]:
    qs = RolloutTarget.objects.filter(rollout=rollout).select_related("card", "group").order_by("id")
    if status:
        qs = qs.filter(status=status)
    return qs


def failure_reasons(rollout: Rollout, limit: int = 20) -> list[dict[str, Any]]:
    """The most frequent last errors of the rollout's failed cards."""
    rows = (
        RolloutTarget.objects.filter(rollout=rollout, status=RolloutTarget.Status.FAILED)
        .values("last_error")
        .annotate(cards=Count("id"), attempts=Sum("attempts"))
        .order_by("-cards", "last_error")[:limit]
    )
    return [{"reason": r["last_error"], "cards": r["cards"], "attempts": r["attempts"]} for r in rows]


def release_facts(ids: Sequence[int]) -> dict[int, ReleaseFacts]:
    """What ``issuers.services`` checks of the releases a bank names in its SSD template (registered
    in ``UpdatesConfig.ready``; issuers sits below updates)."""
    rows = Release.objects.filter(pk__in=list(ids)).only(
        "pk", "bank_id", "state", "package_aid", "package_version", "applet_aids"
    )
    return {
        r.pk: ReleaseFacts(
            id=r.pk,
            bank_id=r.bank_id,
            state=r.state,
            approved=r.state == Release.State.APPROVED,
            package_aid=r.package_aid,
            package_version=r.package_version,
            applet_aids=tuple(r.applet_aids),
        )
        for r in rows
    }


def notices_for(user: AbstractBaseUser, card_id: int, limit: int = 10) -> QuerySet[CardNotice]:
    """The messages organisations left for the holder of a card (the holder only; newest first)."""
    if not user.is_authenticated:
        return CardNotice.objects.none()
    return CardNotice.objects.filter(card_id=card_id, holder_id=user.pk).select_related("organization")[:limit]
