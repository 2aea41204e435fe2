"""Reads of releases and rollouts, scoped to what the caller may see.

A bank's members see their bank's releases and rollouts; the agency and regulators see all of
them (read only); anyone else sees none. Outside the scope an object is a 404, never a 403.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from cards.models import CardJob
from issuers.models import Organization
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


def approved_releases(user: AbstractBaseUser, bank: Organization) -> QuerySet[Release]:
    """The bank's approved releases the user sees, by package then newest first (the forms' choices)."""
    return releases_for(user).filter(bank=bank, state=Release.State.APPROVED).order_by("package_aid", "-created_at")


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


HISTORY_DAYS = 30
HISTORY_MAX_JOBS = 200_000  # the replay reads at most this many completed jobs (the newest are kept)
INSTALL_JOB_KINDS = (CardJob.Kind.ENROLL_BANK, CardJob.Kind.UPDATE_APPLET, CardJob.Kind.REMOVE_BANK)


def version_history(bank_id: int, days: int = HISTORY_DAYS, today: dt.date | None = None) -> dict[str, Any]:
    """Installed versions over time: for each of the bank's packages, the number of cards at each
    version at the end of each of the last ``days`` days (UTC), replayed from the completed card jobs
    that put packages on cards or took them away (enrollment with default applets, install and
    update, removal of the bank). ``{"days": [date, …], "packages": {aid: {version: [count, …]}}}``."""
    today = today or timezone.now().date()
    first_day = today - dt.timedelta(days=days - 1)
    rows = list(
        CardJob.objects.filter(organization_id=bank_id, state=CardJob.State.DONE, kind__in=INSTALL_JOB_KINDS)
        .exclude(finished_at__isnull=True)
        .order_by("-finished_at", "-id")
        .values_list("card_id", "kind", "params", "finished_at")[:HISTORY_MAX_JOBS]
    )
    rows.reverse()
    release_ids: set[int] = set()
    for _, _, params, _ in rows:
        for spec in _installed_specs(params or {}):
            release_ids.add(int(spec))
    versions = {
        pk: (aid, version)
        for pk, aid, version in Release.objects.filter(pk__in=release_ids).values_list(
            "pk", "package_aid", "package_version"
        )
    }
    on_card: dict[tuple[int, str], str] = {}
    series: dict[str, dict[str, list[int]]] = {}
    day_list = [first_day + dt.timedelta(days=n) for n in range(days)]
    index = 0

    def apply(card_id: int, kind: str, params: dict[str, Any]) -> None:
        if kind == CardJob.Kind.REMOVE_BANK:
            for key in [k for k in on_card if k[0] == card_id]:
                del on_card[key]
            return
        for aid in params.get("remove") or []:
            on_card.pop((card_id, str(aid).upper()), None)
        for release_id in _installed_specs(params):
            found = versions.get(int(release_id))
            if found is not None:
                on_card[(card_id, found[0])] = found[1]

    for n, day in enumerate(day_list):
        while index < len(rows) and timezone.localtime(rows[index][3], dt.UTC).date() <= day:
            card_id, kind, params, _ = rows[index]
            apply(card_id, kind, params or {})
            index += 1
        counts: dict[tuple[str, str], int] = {}
        for (_, aid), version in on_card.items():
            counts[(aid, version)] = counts.get((aid, version), 0) + 1
        for (aid, version), count in counts.items():
            series.setdefault(aid, {}).setdefault(version, [0] * days)[n] = count
    return {
        "days": day_list,
        "packages": {aid: dict(sorted(by_version.items())) for aid, by_version in sorted(series.items())},
    }


def _installed_specs(params: dict[str, Any]) -> list[Any]:
    """The releases a job put on the card: ``packages`` (update, install), ``applets`` and an
    enrollment's ``default_applets``."""
    out = [spec.get("release") for spec in params.get("packages") or []]
    out += [spec.get("release") for spec in params.get("applets") or []]
    out += [spec.get("release") for spec in params.get("default_applets") or []]
    return [r for r in out if isinstance(r, int) or (isinstance(r, str) and r.isdigit())]


def campaigns_of(bank_id: int, limit: int = 5) -> list[tuple[Rollout, dict[str, Any]]]:
    """The bank's open rollouts and campaigns, then the latest finished ones, with their progress."""
    qs = Rollout.objects.filter(bank_id=bank_id).select_related("release").prefetch_related("groups")
    open_ones = list(qs.filter(state__in=Rollout.OPEN_STATES).order_by("-created_at", "-id")[:limit])
    rest = limit - len(open_ones)
    done = list(qs.exclude(state__in=Rollout.OPEN_STATES).order_by("-created_at", "-id")[:rest]) if rest > 0 else []
    return [(r, progress(r)) for r in open_ones + done]


def upgrade_paths(rollout: Rollout) -> dict[str, int]:
    """How the rollout's cards will take the new version (docs/elf-upgrade.md), told to the bank
    before it starts: ``in_place`` (GP Amendment H: instances and their data kept) or ``reinstall``
    (delete and reinstall, the instances' last personalisation delivered again)."""
    if rollout.target_kind not in ("package", "cards"):
        return {"in_place": 0, "reinstall": 0}
    counts = {
        row["card__elf_upgrade"]: row["n"]
        for row in rollout.targets.order_by().values("card__elf_upgrade").annotate(n=Count("id"))
    }
    return {"in_place": counts.get(True, 0), "reinstall": counts.get(False, 0)}
