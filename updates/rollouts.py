"""Staged rollouts (hawkBit / AWS IoT Jobs style): plan, approve, start, advance, pause, resume, cancel.

Planning is set-based: one ``INSERT ... SELECT`` writes every target of a rollout, with a window
function (``ROW_NUMBER() OVER (ORDER BY <hash of the card>)``) spreading the cards over the
cumulative groups in a pseudo-random but reproducible order. Activating a group (or retrying
failed cards) creates the card jobs with one ``INSERT ... SELECT`` too, and links the targets to
them in the same statement (PostgreSQL) or the next one (SQLite). No per-card Python loop.

Per-card results come from the OTA engine's ``job_state_changed`` signal (connected in
``updates.rollout_models``), inside the exchange's transaction: the target's status and its
group's counters change with the job. Every path locks the rollout row first, so the signal
handler, the API actions and the Celery beat task never deadlock one another.

Lifecycle: awaiting_approval → ready → (scheduled →) running ⇄ paused → completed | cancelled.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from audit.services import record_event
from cards.models import Card, CardJob
from ecard.errors import ServiceError
from issuers.models import Organization
from updates.models import Release
from updates.rollout_models import Rollout, RolloutGroup, RolloutTarget

MAX_GROUPS = 20
MAX_LISTED_CARDS = 10_000
# A group this small is activated inside the transaction that starts it (an API call, or the card
# result that met the previous group's threshold); a larger one by the Celery task, in chunks, so
# neither a card holder's exchange nor the audit log's lock waits for a million inserts.
INLINE_ACTIVATION_MAX = 2_000
DISPATCH_CHUNK = 20_000  # card jobs per transaction when a large group starts (PostgreSQL)
HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: a reproducible shuffle of card ids
HASH_MODULUS = 4294967291  # the largest prime below 2**32

_PERCENT = re.compile(r"^\s*([0-9]{1,3}(?:\.[0-9]{1,2})?)\s*%\s*$")
# A card count: ASCII digits only ("²".isdigit() is true, and int("²") raises ValueError: a 500).
_COUNT = re.compile(r"^\s*([0-9]{1,9})\s*$")


@dataclass(frozen=True)
class Bound:
    """A cumulative group bound: ``percent`` in hundredths of a percent, or ``count`` cards."""

    text: str
    basis_points: int | None = None
    count: int | None = None


def parse_groups(spec: Any) -> list[Bound]:
    """``["1%", "10%", "100%"]`` or counts (``[5, 50, "100%"]``); cumulative, the last must be 100%."""
    if not isinstance(spec, list | tuple) or not spec:
        raise ServiceError("groups must be a non-empty list such as [\"10%\", \"50%\", \"100%\"]", field="groups")
    if len(spec) > MAX_GROUPS:
        raise ServiceError(f"at most {MAX_GROUPS} groups", field="groups")
    bounds: list[Bound] = []
    last_bp = last_count = 0
    for item in spec:
        if isinstance(item, bool):
            raise ServiceError(f"{item!r} is not a percentage or a card count", field="groups")
        count_text = _COUNT.match(item) if isinstance(item, str) else None
        if isinstance(item, int) or count_text is not None:
            count = item if isinstance(item, int) else int(count_text.group(1))
            if count >= 10**9:
                raise ServiceError("a card count is below 1,000,000,000", field="groups")
            if count < 1 or count <= last_count:
                raise ServiceError(
                    "card counts must be positive and increasing (groups are cumulative)", field="groups"
                )
            bounds.append(Bound(text=str(count), count=count))
            last_count = count
            continue
        match = _PERCENT.match(item) if isinstance(item, str) else None
        if match is None:
            raise ServiceError(f"{item!r} is not a percentage (\"10%\") or a card count", field="groups")
        basis_points = round(float(match.group(1)) * 100)
        if not 0 < basis_points <= 10_000 or basis_points <= last_bp:
            raise ServiceError(
                "percentages must be above 0, at most 100 and increasing (groups are cumulative)", field="groups"
            )
        bounds.append(Bound(text=f"{match.group(1)}%", basis_points=basis_points))
        last_bp = basis_points
    if bounds[-1].basis_points != 10_000:
        raise ServiceError("the last group must be 100% so that every target card is in a group", field="groups")
    return bounds


def _now_param(value: dt.datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _audit(rollout: Rollout, action: str, actor: Any = None, *, reason: str = "", **details: Any) -> None:
    record_event(
        action=action,
        subject_type="rollout",
        subject_id=rollout.pk,
        actor=actor,
        actor_org=rollout.bank if actor is not None else None,
        organization=rollout.bank,
        reason=reason,
        actor_type=None if actor is not None else "system",
        details={"release": rollout.release_id, "package_aid": rollout.package_aid, "state": rollout.state, **details},
    )


def _can_operate(actor: AbstractBaseUser | None, bank: Organization) -> None:
    from issuers.roles import principal

    if actor is None or not principal(actor).can_operate(bank.pk):
        raise ServiceError(f"only {bank.name}'s operators manage its rollouts", code="forbidden")


def _locked(rollout: Rollout | int) -> Rollout:
    pk = rollout.pk if isinstance(rollout, Rollout) else rollout
    return Rollout.objects.select_for_update(of=("self",)).select_related("bank", "release").get(pk=pk)


# --------------------------------------------------------------------------------------------- planning


@transaction.atomic
def create_rollout(
    *,
    bank: Organization,
    release: Release,
    actor: AbstractBaseUser | None,
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
    if release.state != Release.State.APPROVED:
        raise ServiceError(f"release {release.package_aid} v{release.package_version} is {release.state}",
                           field="release")
    bounds = parse_groups(groups)
    for label, value, low in (("success_threshold", success_threshold, 1), ("error_threshold", error_threshold, 1)):
        if not isinstance(value, int) or not low <= value <= 100:
            raise ServiceError(f"{label} is a percentage from {low} to 100", field=label)
    if not 0 <= retry_count <= 10:
        raise ServiceError("retry_count is 0 to 10", field="retry_count")
    if not 0 <= retry_backoff <= 7 * 86400:
        raise ServiceError("retry_backoff is 0 to 604800 seconds", field="retry_backoff")
    if from_version and not re.fullmatch(r"\d{1,3}\.\d{1,3}", from_version):
        raise ServiceError("from_version is major.minor, e.g. 1.0", field="from_version")
    if from_version == release.package_version:
        raise ServiceError(f"the cards would already be at version {from_version}", field="from_version")
    if cins is not None:
        cins = sorted({c.strip().upper() for c in cins if c and c.strip()})
        if not cins:
            raise ServiceError("the card list is empty", field="cins")
        if len(cins) > MAX_LISTED_CARDS:
            raise ServiceError(f"at most {MAX_LISTED_CARDS} listed cards; target by package version instead",
                               field="cins")
    busy = Rollout.objects.filter(bank=bank, package_aid=release.package_aid, state__in=Rollout.OPEN_STATES).first()
    if busy is not None:
        raise ServiceError(f"rollout {busy.pk} of {release.package_aid} is still {busy.state}", code="conflict")
    try:
        with transaction.atomic():  # the partial unique constraint settles a race between two creates
            rollout = Rollout.objects.create(
                bank=bank,
                release=release,
                name=name[:200],
                package_aid=release.package_aid,
                from_version=from_version,
                target_kind=Rollout.Target.CARDS if cins is not None else Rollout.Target.PACKAGE,
                group_spec=[b.text for b in bounds],
                success_threshold=success_threshold,
                error_threshold=error_threshold,
                retry_count=retry_count,
                retry_backoff=retry_backoff,
                require_approval=require_approval,
                start_at=start_at,
                state=Rollout.State.AWAITING_APPROVAL if require_approval else Rollout.State.READY,
                created_by=actor if actor is not None and getattr(actor, "pk", None) else None,
            )
    except IntegrityError as exc:
        raise ServiceError(f"another rollout of {release.package_aid} is open", code="conflict") from exc
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
            raise ServiceError(
                f"{len(missing)} of the listed cards do not carry {release.package_aid}"
                f"{' v' + from_version if from_version else ' at another version'} in {bank.name}'s active "
                f"security domain on a SECURED card: {shown}",
                field="cins",
            )
    total = plan_targets(rollout, bounds, [g.pk for g in group_rows], cins)
    if total == 0:
        raise ServiceError(
            f"no card carries {release.package_aid}{' v' + from_version if from_version else ''} "
            f"in {bank.name}'s security domain",
            field="from_version",
        )
    rollout.total = total
    rollout.save(update_fields=["total", "updated_at"])
    _recount(rollout)
    _audit(
        rollout, "rollout.created", actor,
        to_version=release.package_version, from_version=from_version or None, targets=total,
        groups=rollout.group_spec, listed=cins is not None,
    )
    return rollout


def _target_source(rollout: Rollout, cins: list[str] | None) -> tuple[str, list[Any]]:
    """FROM/WHERE of the cards a rollout targets: the bank's active SSD on a SECURED card holding the
    package at the version to upgrade from (or any other version)."""
    sql = (
        " FROM cards_securitydomain sd"
        " JOIN cards_card c ON c.id = sd.card_id"
        " JOIN cards_appletinstance ai ON ai.security_domain_id = sd.id"
        " WHERE sd.organization_id = %s AND sd.is_isd = %s AND sd.state = %s AND c.lifecycle = %s"
        " AND ai.package_aid = %s"
    )
    params: list[Any] = [rollout.bank_id, False, "active", Card.Lifecycle.SECURED, rollout.package_aid]
    if rollout.from_version:
        sql += " AND ai.package_version = %s"
        params.append(rollout.from_version)
    else:
        sql += " AND ai.package_version <> %s"
        params.append(rollout.release.package_version)
    if cins is not None:
        sql += " AND c.cin IN (" + ", ".join(["%s"] * len(cins)) + ")"
        params += cins
    return sql, params


def _matching_cins(rollout: Rollout, cins: list[str]) -> list[str]:
    source, params = _target_source(rollout, cins)
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT c.cin" + source, params)
        return [row[0] for row in cursor.fetchall()]


def plan_targets(rollout: Rollout, bounds: list[Bound], group_ids: list[int], cins: list[str] | None) -> int:
    """Write every target of the rollout with its group in one INSERT ... SELECT; returns the count."""
    source, source_params = _target_source(rollout, cins)
    if connection.vendor == "postgresql":
        instances = "jsonb_agg(ai.instance_aid ORDER BY ai.instance_aid)"
    else:
        instances = "json_group_array(ai.instance_aid)"
    # Group i holds the cards whose rank rn is within its cumulative bound: rn <= ceil(total * p)
    # for a percentage (integer arithmetic: rn * 10000 - 9999 <= total * basis points), rn <= n for
    # a count. The first bound that holds wins; the last group is 100%.
    cases = []
    case_params: list[Any] = []
    for bound, group_id in zip(bounds[:-1], group_ids[:-1], strict=True):
        if bound.count is not None:
            cases.append("WHEN rn <= %s THEN %s")
            case_params += [bound.count, group_id]
        else:
            cases.append("WHEN rn * 10000 - 9999 <= total * %s THEN %s")
            case_params += [bound.basis_points, group_id]
    group_expr = f"CASE {' '.join(cases)} ELSE %s END" if cases else "%s"
    case_params.append(group_ids[-1])
    sql = (
        "INSERT INTO updates_rollouttarget"  # noqa: S608 - constant SQL fragments; every value is a parameter
        " (rollout_id, group_id, card_id, security_domain_id, instances, status, attempts, retries, last_error,"
        " updated_at)"
        f" SELECT %s, {group_expr}, card_id, sd_id, instances, %s, 0, 0, %s, %s FROM ("
        f"  SELECT sd.card_id AS card_id, sd.id AS sd_id, {instances} AS instances,"
        "   ROW_NUMBER() OVER (ORDER BY (sd.card_id * %s + %s) %% %s, sd.card_id) AS rn,"
        "   COUNT(*) OVER () AS total"
        f"  {source}"
        "  GROUP BY sd.card_id, sd.id"
        " ) ranked"
    )
    params = [
        rollout.pk, *case_params, RolloutTarget.Status.PENDING, "", _now_param(timezone.now()),
        HASH_MULTIPLIER, rollout.pk, HASH_MODULUS, *source_params,
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Sort and hash a million rows in memory rather than in temporary files (this transaction only).
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


def _recount(rollout: Rollout) -> None:
    """Set every group's counters from its targets (one GROUP BY), after a bulk transition."""
    counts: dict[int, dict[str, int]] = {}
    rows = (
        RolloutTarget.objects.filter(rollout=rollout).values_list("group_id", "status").annotate(n=Count("id"))
        .order_by()
    )
    for group_id, status, n in rows:
        counts.setdefault(group_id, {})[status] = n
    for group in RolloutGroup.objects.filter(rollout=rollout):
        c = counts.get(group.pk, {})
        fields = {s: c.get(s, 0) for s in RolloutTarget.Status.values}
        RolloutGroup.objects.filter(pk=group.pk).update(total=sum(fields.values()), **fields)


# --------------------------------------------------------------------------------------------- dispatch


def _job_values(rollout: Rollout, src: str, stamp: Any) -> tuple[str, str, list[Any]]:
    """Columns, SELECT expressions and their parameters of the card jobs made from targets ``src``.

    Every concrete column of ``CardJob`` is listed: one added later gets its model default, so a
    migration of the cards app cannot break group activation."""
    pg = connection.vendor == "postgresql"
    if pg:
        job_params = (
            "jsonb_build_object('packages', jsonb_build_array(jsonb_build_object('release', %s::bigint, "
            f"'instances', {src}.instances)), 'rollout', %s::bigint, 'rollout_target', {src}.id)"
        )
    else:
        job_params = (
            f"json_object('packages', json_array(json_object('release', %s, 'instances', json({src}.instances))), "
            f"'rollout', %s, 'rollout_target', {src}.id)"
        )
    explicit: dict[str, tuple[str, list[Any]]] = {
        "card_id": (f"{src}.card_id", []),
        "kind": ("%s", [CardJob.Kind.UPDATE_APPLET]),
        "organization_id": ("%s", [rollout.bank_id]),
        "security_domain_id": (f"{src}.security_domain_id", []),
        "params": (job_params, [rollout.release_id, rollout.pk]),
        "state": ("%s", [CardJob.State.PENDING]),
        "attempts": ("0", []),
        "last_error": ("''", []),
        "created_by_id": ("%s", [rollout.created_by_id]),
        "created_at": ("%s", [stamp]),
    }
    columns, values, params = [], [], []
    for f in CardJob._meta.concrete_fields:
        if f.primary_key:
            continue
        columns.append(connection.ops.quote_name(f.column))
        if f.column in explicit:
            sql, sql_params = explicit[f.column]
        elif getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            sql, sql_params = "%s", [stamp]
        else:
            sql, sql_params = "%s", [f.get_db_prep_save(f.get_default(), connection)]
        values.append(sql)
        params += sql_params
    return ", ".join(columns), ", ".join(values), params


def _dispatch(
    rollout: Rollout, condition: str, params: list[Any], *, retry: bool, now: dt.datetime, limit: int | None = None
) -> int:
    """Create the card jobs of the targets matching ``condition`` (SQL over ``t``) and mark them running
    (at most ``limit`` on PostgreSQL, so one transaction never holds the audit log lock for long)."""
    stamp = _now_param(now)
    retries = "t.retries + 1" if retry else "t.retries"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns, values, value_params = _job_values(rollout, "c", stamp)
            cursor.execute(
                "WITH chosen AS ("  # noqa: S608 - constant SQL fragments; every value is a parameter
                "  SELECT t.id, t.card_id, t.security_domain_id, t.instances FROM updates_rollouttarget t"
                f"  WHERE t.rollout_id = %s AND {condition} ORDER BY t.id"
                f"  {'LIMIT %s' if limit else ''} FOR UPDATE"
                "), jobs AS ("
                f"  INSERT INTO cards_cardjob ({columns}) SELECT {values} FROM chosen c ORDER BY c.id"
                "  RETURNING id, (params->>'rollout_target')::bigint AS target_id"
                ")"
                f" UPDATE updates_rollouttarget t SET job_id = jobs.id, status = %s, attempts = t.attempts + 1,"
                f"  retries = {retries}, next_retry_at = NULL, updated_at = %s"
                " FROM jobs WHERE t.id = jobs.target_id",
                [rollout.pk, *params, *([limit] if limit else []), *value_params, RolloutTarget.Status.RUNNING, stamp],
            )
            return max(cursor.rowcount, 0)
        columns, values, value_params = _job_values(rollout, "t", stamp)
        cursor.execute(
            f"INSERT INTO cards_cardjob ({columns}) SELECT {values}"  # noqa: S608 - constant SQL fragments; every value is a parameter
            f" FROM updates_rollouttarget t WHERE t.rollout_id = %s AND {condition} ORDER BY t.id",
            [*value_params, rollout.pk, *params],
        )
        cursor.execute(
            "UPDATE updates_rollouttarget AS t SET"  # noqa: S608 - constant SQL fragments; every value is a parameter
            " job_id = (SELECT MAX(j.id) FROM cards_cardjob j WHERE j.card_id = t.card_id AND j.state = %s"
            "   AND j.kind = %s AND json_extract(j.params, '$.rollout_target') = t.id),"
            f" status = %s, attempts = t.attempts + 1, retries = {retries}, next_retry_at = NULL, updated_at = %s"
            f" WHERE t.rollout_id = %s AND {condition}",
            [CardJob.State.PENDING, CardJob.Kind.UPDATE_APPLET, RolloutTarget.Status.RUNNING, stamp, rollout.pk,
             *params],
        )
        return max(cursor.rowcount, 0)


def _running_group_ids(rollout: Rollout) -> list[int]:
    return list(rollout.groups.filter(state=RolloutGroup.State.RUNNING).values_list("pk", flat=True))


def _dispatch_ready(rollout: Rollout, now: dt.datetime, group_ids: list[int] | None = None) -> int:
    """Jobs for the pending targets of running groups and for failed targets whose retry is due, at
    most ``DISPATCH_CHUNK`` of each per transaction; the rest is left to the evaluation task."""
    group_ids = _running_group_ids(rollout) if group_ids is None else group_ids
    if not group_ids:
        return 0
    marks = ", ".join(["%s"] * len(group_ids))
    new = _dispatch(rollout, f"t.group_id IN ({marks}) AND t.status = %s",
                    [*group_ids, RolloutTarget.Status.PENDING], retry=False, now=now, limit=DISPATCH_CHUNK)
    retried = _dispatch(
        rollout,
        f"t.group_id IN ({marks}) AND t.status = %s AND t.next_retry_at IS NOT NULL AND t.next_retry_at <= %s",
        [*group_ids, RolloutTarget.Status.FAILED, _now_param(now)],
        retry=True,
        now=now,
        limit=DISPATCH_CHUNK,
    )
    if new or retried:
        _recount(rollout)
        _audit(rollout, "rollout.dispatched", None, jobs=new, retries=retried)
    if connection.vendor == "postgresql" and max(new, retried) >= DISPATCH_CHUNK:
        _schedule_evaluation(rollout.pk)  # more to dispatch: the next chunk in its own transaction
    return new + retried


def _activate_group(rollout: Rollout, group: RolloutGroup, now: dt.datetime, actor: Any, *, inline: bool) -> None:
    group.state = RolloutGroup.State.RUNNING
    group.started_at = now
    group.save(update_fields=["state", "started_at"])
    dispatched: int | None = None
    if group.total <= INLINE_ACTIVATION_MAX:
        dispatched = _dispatch_ready(rollout, now, [group.pk])
    else:
        _schedule_evaluation(rollout.pk)  # jobs created by the task, in chunks
    _audit(rollout, "rollout.group_started", actor, group=group.index, cards=group.total, jobs=dispatched)


def _schedule_evaluation(rollout_id: int) -> None:
    from updates.rollout_tasks import evaluate_rollout

    transaction.on_commit(lambda: evaluate_rollout.delay(rollout_id))


def _withdraw_pending_jobs(rollout: Rollout, target_status: str, now: dt.datetime) -> int:
    """Cancel the rollout's card jobs not yet begun on a card (a job a card already started —
    attempts > 0 — finishes, so no card is left between versions); their targets get ``target_status``."""
    running = RolloutTarget.objects.filter(rollout=rollout, status=RolloutTarget.Status.RUNNING)
    jobs = CardJob.objects.filter(
        pk__in=running.values("job_id"), state=CardJob.State.PENDING, attempts=0
    )
    job_ids = list(jobs.values_list("pk", flat=True)) if connection.vendor != "postgresql" else None
    if job_ids is not None:
        count = CardJob.objects.filter(pk__in=job_ids).update(
            state=CardJob.State.CANCELLED, finished_at=now, last_error=f"rollout {rollout.pk} {rollout.state}"
        )
        RolloutTarget.objects.filter(rollout=rollout, job_id__in=job_ids).update(status=target_status, updated_at=now)
        return count
    with connection.cursor() as cursor:
        cursor.execute(
            # SKIP LOCKED: a job row another transaction holds is being taken by a presentation of
            # its card right now; it is running, not withdrawn (and we never wait on a session).
            "WITH cancelled AS ("
            "  UPDATE cards_cardjob j SET state = %s, finished_at = %s, last_error = %s"
            "  WHERE j.state = %s AND j.attempts = 0 AND j.id IN ("
            "   SELECT j2.id FROM cards_cardjob j2 JOIN updates_rollouttarget t ON t.job_id = j2.id"
            "   WHERE t.rollout_id = %s AND t.status = %s AND j2.state = %s AND j2.attempts = 0"
            "   FOR UPDATE OF j2 SKIP LOCKED)"
            "  RETURNING j.id"
            ") UPDATE updates_rollouttarget t SET status = %s, updated_at = %s"
            " FROM cancelled WHERE t.rollout_id = %s AND t.job_id = cancelled.id",
            [CardJob.State.CANCELLED, now, f"rollout {rollout.pk} {rollout.state}", CardJob.State.PENDING,
             rollout.pk, RolloutTarget.Status.RUNNING, CardJob.State.PENDING, target_status, now, rollout.pk],
        )
        return max(cursor.rowcount, 0)


# --------------------------------------------------------------------------------------------- actions


@transaction.atomic
def approve_rollout(*, rollout: Rollout, actor: AbstractBaseUser) -> Rollout:
    rollout = _locked(rollout)
    _can_operate(actor, rollout.bank)
    if rollout.state != Rollout.State.AWAITING_APPROVAL:
        raise ServiceError(f"the rollout is {rollout.state}, not awaiting approval", code="state")
    if rollout.created_by_id == actor.pk:
        raise ServiceError("four eyes: a different user of the bank must approve", code="forbidden")
    rollout.state = Rollout.State.READY
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
    if rollout.state == Rollout.State.AWAITING_APPROVAL:
        raise ServiceError("the rollout needs the approval of a second bank user first", code="state")
    if rollout.state != Rollout.State.READY:
        raise ServiceError(f"the rollout is {rollout.state}", code="state")
    if rollout.release.state != Release.State.APPROVED:
        raise ServiceError(f"the release is {rollout.release.state}", code="state")
    now = timezone.now()
    if rollout.start_at is not None and rollout.start_at > now:
        rollout.state = Rollout.State.SCHEDULED
        rollout.save(update_fields=["state", "updated_at"])
        _audit(rollout, "rollout.scheduled", actor, start_at=rollout.start_at.isoformat())
        return rollout
    _begin(rollout, now, actor)
    return rollout


def _begin(rollout: Rollout, now: dt.datetime, actor: Any) -> None:
    rollout.state = Rollout.State.RUNNING
    rollout.started_at = now
    rollout.save(update_fields=["state", "started_at", "updated_at"])
    _audit(rollout, "rollout.started", actor, targets=rollout.total)
    first = rollout.groups.order_by("index").first()
    if first is not None:
        _activate_group(rollout, first, now, actor, inline=True)
    _evaluate(rollout, now, inline=True)  # a large first group is dispatched by the task


@transaction.atomic
def pause_rollout(*, rollout: Rollout, actor: AbstractBaseUser | None, reason: str = "") -> Rollout:
    rollout = _locked(rollout)
    if actor is not None:
        _can_operate(actor, rollout.bank)
    if rollout.state not in (Rollout.State.RUNNING, Rollout.State.SCHEDULED):
        raise ServiceError(f"the rollout is {rollout.state}", code="state")
    _pause(rollout, timezone.now(), actor, reason or "paused by an operator")
    return rollout


def _pause(rollout: Rollout, now: dt.datetime, actor: Any, reason: str) -> None:
    rollout.state = Rollout.State.PAUSED
    rollout.pause_reason = reason[:2000]
    rollout.save(update_fields=["state", "pause_reason", "updated_at"])
    withdrawn = _withdraw_pending_jobs(rollout, RolloutTarget.Status.PENDING, now)
    _recount(rollout)
    _audit(rollout, "rollout.paused", actor, reason=reason, jobs_withdrawn=withdrawn, automatic=actor is None)


@transaction.atomic
def resume_rollout(*, rollout: Rollout, actor: AbstractBaseUser | None) -> Rollout:
    """Continue a paused rollout: cards withdrawn at the pause get their jobs again and failed
    cards of the running groups are retried now, with a fresh retry budget."""
    rollout = _locked(rollout)
    if actor is not None:
        _can_operate(actor, rollout.bank)
    if rollout.state != Rollout.State.PAUSED:
        raise ServiceError(f"the rollout is {rollout.state}, not paused", code="state")
    if rollout.release.state != Release.State.APPROVED:
        raise ServiceError(f"the release is {rollout.release.state}; cancel the rollout", code="state")
    now = timezone.now()
    rollout.state = Rollout.State.RUNNING if rollout.started_at else Rollout.State.SCHEDULED
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
    if rollout.state not in Rollout.OPEN_STATES:
        raise ServiceError(f"the rollout is {rollout.state}", code="state")
    now = timezone.now()
    rollout.state = Rollout.State.CANCELLED
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


# --------------------------------------------------------------------------------------------- results


def record_card_result(*, job: CardJob, state: str, error: str) -> None:
    """The engine moved a rollout job to done, failed, or pending after a failed attempt (signal
    handler, inside the engine's transaction): the card's status, its group's counters, and an
    immediate evaluation of the rollout."""
    from updates.policy import ROLLOUT_INACTIVE as POLICY_INACTIVE

    rollout_id = job.params.get("rollout")
    if rollout_id is None:
        return
    rollout = Rollout.objects.select_for_update(of=("self",)).select_related("bank", "release").filter(
        pk=rollout_id
    ).first()
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
        status = RolloutTarget.Status.CANCELLED if rollout.state == Rollout.State.CANCELLED else (
            RolloutTarget.Status.PENDING
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
    else:
        return
    target.status = status
    target.updated_at = now
    target.save(update_fields=["status", "last_error", "next_retry_at", "updated_at"])
    RolloutGroup.objects.filter(pk=target.group_id).update(running=F("running") - 1, **{status: F(status) + 1})
    record_event(
        action="rollout.card_result",
        subject_type="rollout",
        subject_id=rollout.pk,
        card_cin=job.card.cin,
        organization=rollout.bank,
        outcome="success" if status == RolloutTarget.Status.SUCCEEDED else "failure",
        reason=target.last_error,
        actor_type="agent",
        details={"job": job.pk, "status": status, "attempt": target.attempts,
                 "retry_at": target.next_retry_at.isoformat() if target.next_retry_at else None},
    )
    _evaluate(rollout, now, inline=True)


# --------------------------------------------------------------------------------------------- evaluation


def _evaluate(rollout: Rollout, now: dt.datetime, *, inline: bool) -> None:
    """Start a scheduled rollout whose time came; pause at a group's error threshold; retry due
    cards; start the next group when the latest reached its success threshold; finish groups and
    the rollout. The rollout row is locked by the caller."""
    if rollout.state == Rollout.State.SCHEDULED and (rollout.start_at is None or rollout.start_at <= now):
        _begin(rollout, now, None)
        return
    if rollout.state != Rollout.State.RUNNING:
        return
    groups = list(rollout.groups.order_by("index"))
    for group in groups:
        if group.state == RolloutGroup.State.RUNNING and group.failed and (
            group.failed * 100 >= rollout.error_threshold * group.total
        ):
            _pause(
                rollout, now, None,
                f"group {group.index}: {group.failed} of {group.total} cards failed "
                f"(error threshold {rollout.error_threshold}%)",
            )
            return
    if (not inline or _has_due_retries(rollout, now)) and _dispatch_ready(rollout, now):
        groups = list(rollout.groups.order_by("index"))
    for group in groups:
        if group.state == RolloutGroup.State.RUNNING and group.pending == 0 and group.running == 0 and not (
            RolloutTarget.objects.filter(
                group=group, status=RolloutTarget.Status.FAILED, next_retry_at__isnull=False
            ).exists()
        ):
            group.state = RolloutGroup.State.DONE
            group.finished_at = now
            group.save(update_fields=["state", "finished_at"])
            _audit(rollout, "rollout.group_done", None, group=group.index, succeeded=group.succeeded,
                   failed=group.failed, cancelled=group.cancelled)
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
                rollout, now, None,
                f"group {latest.index} finished with {latest.succeeded} of {latest.total} cards succeeded "
                f"(success threshold {rollout.success_threshold}%)",
            )
            return
    if groups and all(g.state == RolloutGroup.State.DONE for g in groups):
        rollout.state = Rollout.State.COMPLETED
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
