"""Dispatch SQL: planning a rollout's targets and turning them into card jobs, set-based.

Planning is one ``INSERT ... SELECT`` with a window function spreading the cards over the cumulative
groups in a pseudo-random but reproducible order; activating a group (or retrying failed cards)
creates the card jobs with one ``INSERT ... SELECT`` too. No per-card Python loop.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from cards import validity
from cards.holder_emails import work_waiting
from cards.models import Card, CardJob, SecurityDomain
from updates import rollouts as rollouts_package
from updates.rollout_models import Rollout, RolloutGroup, RolloutTarget
from updates.rollouts.common import _audit, _now_param
from updates.rollouts.groups import Bound

MAX_LISTED_CARDS = 10_000
# A group this small is activated inside the transaction that starts it (an API call, or the card
# result that met the previous group's threshold); a larger one by the Celery task, in chunks, so
# neither a card holder's exchange nor the audit log's lock waits for a million inserts.
INLINE_ACTIVATION_MAX = 2_000
DISPATCH_CHUNK = 20_000  # card jobs per transaction when a large group starts (PostgreSQL)
HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: a reproducible shuffle of card ids
HASH_MODULUS = 4294967291  # the largest prime below 2**32


def _target_source(rollout: Rollout, cins: list[str] | None) -> tuple[str, list[Any]]:
    """FROM/WHERE of the cards a rollout targets: the bank's active SSD on a SECURED card in use, and

    * an upgrade (package, cards): holding the package at the version to upgrade from (or any other);
    * an install: unlocked, holding neither the package nor an applet at one of the new instance AIDs;
    * a key rotation: unlocked, keyed by the bank (a key version on record), no rotation pending;
    * a renewal (the agency's campaign): the card's ISD, the card in use (standing active), no
      renewal pending, and, unless the cards are listed, its validity ending within the agency's
      renewal window (``cards.validity.renewal_horizon``; expired cards included)."""
    kind = rollout.target_kind
    renew = kind == Rollout.Target.RENEW
    params: list[Any] = [rollout.bank_id, renew, "active", Card.Lifecycle.SECURED, Card.Standing.ACTIVE]
    sql = (
        " FROM cards_securitydomain sd"
        " JOIN cards_card c ON c.id = sd.card_id"
        + (" JOIN cards_appletinstance ai ON ai.security_domain_id = sd.id" if kind not in NEW_WORK_KINDS else "")
        + " WHERE sd.organization_id = %s AND sd.is_isd = %s AND sd.state = %s AND c.lifecycle = %s"
        " AND c.standing = %s"  # a blocked or terminated card is no target (issue 19)
    )
    if kind == Rollout.Target.INSTALL:
        instances = [spec["instance_aid"] for spec in rollout.install_instances]
        marks = ", ".join(["%s"] * len(instances))
        sql += (
            " AND sd.lifecycle <> %s"  # noqa: S608 - constant SQL fragments; every value is a parameter
            " AND NOT EXISTS (SELECT 1 FROM cards_cardpackage p WHERE p.security_domain_id = sd.id"
            "  AND p.package_aid = %s)"
            " AND NOT EXISTS (SELECT 1 FROM cards_appletinstance ai WHERE ai.security_domain_id = sd.id"
            f"  AND (ai.package_aid = %s OR ai.instance_aid IN ({marks})))"
        )
        params += [SecurityDomain.Lifecycle.LOCKED, rollout.package_aid, rollout.package_aid, *instances]
    elif renew:
        sql += (
            " AND NOT EXISTS (SELECT 1 FROM cards_cardjob j WHERE j.card_id = c.id"
            "  AND j.kind = %s AND j.state IN (%s, %s))"
        )
        params += [CardJob.Kind.RENEW_CARD, CardJob.State.PENDING, CardJob.State.RUNNING]
        if cins is None:
            sql += " AND c.valid_until IS NOT NULL AND c.valid_until <= %s"
            params.append(connection.ops.adapt_datefield_value(validity.renewal_horizon(rollout.bank)))
    elif kind == Rollout.Target.ROTATE:
        sql += (
            " AND sd.lifecycle <> %s AND sd.key_kvn IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM cards_cardjob j WHERE j.security_domain_id = sd.id"
            "  AND j.kind = %s AND j.state IN (%s, %s))"
        )
        params += [
            SecurityDomain.Lifecycle.LOCKED,
            CardJob.Kind.ROTATE_KEYS,
            CardJob.State.PENDING,
            CardJob.State.RUNNING,
        ]
    else:
        sql += " AND ai.package_aid = %s"
        params.append(rollout.package_aid)
        if rollout.from_version:
            sql += " AND ai.package_version = %s"
            params.append(rollout.from_version)
        else:
            sql += " AND ai.package_version <> %s"
            params.append(rollout.release.package_version if rollout.release else "")
    if cins is not None:
        sql += " AND c.cin IN (" + ", ".join(["%s"] * len(cins)) + ")"
        params += cins
    return sql, params


# Target kinds whose cards are chosen by what they lack (no package instance to join).
NEW_WORK_KINDS = (Rollout.Target.INSTALL, Rollout.Target.ROTATE, Rollout.Target.RENEW)


def job_kind(rollout: Rollout) -> str:
    """The card job a rollout's target becomes: a key rotation, or an install/update of the package
    (``updates.plans.SsdUpdatePackages`` loads the package when the card lacks it and installs the
    instances)."""
    if rollout.target_kind == Rollout.Target.RENEW:
        return CardJob.Kind.RENEW_CARD  # updates.renewal.IsdRenewCard
    return CardJob.Kind.ROTATE_KEYS if rollout.target_kind == Rollout.Target.ROTATE else CardJob.Kind.UPDATE_APPLET


def _matching_cins(rollout: Rollout, cins: list[str]) -> list[str]:
    source, params = _target_source(rollout, cins)
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT c.cin" + source, params)
        return [row[0] for row in cursor.fetchall()]


def plan_targets(rollout: Rollout, bounds: list[Bound], group_ids: list[int], cins: list[str] | None) -> int:
    """Write every target of the rollout with its group in one INSERT ... SELECT; returns the count."""
    source, source_params = _target_source(rollout, cins)
    pg = connection.vendor == "postgresql"
    instance_params: list[Any] = []
    if rollout.target_kind in NEW_WORK_KINDS:
        # the same instances on every card (an install), or none (a key rotation)
        instances = "%s::jsonb" if pg else "%s"
        instance_params = [json.dumps([spec["instance_aid"] for spec in rollout.install_instances])]
    elif pg:
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
        rollout.pk,
        *case_params,
        RolloutTarget.Status.PENDING,
        "",
        _now_param(timezone.now()),
        *instance_params,
        HASH_MULTIPLIER,
        rollout.pk,
        HASH_MODULUS,
        *source_params,
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
        RolloutTarget.objects.filter(rollout=rollout)
        .values_list("group_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for group_id, status, n in rows:
        counts.setdefault(group_id, {})[status] = n
    for group in RolloutGroup.objects.filter(rollout=rollout):
        c = counts.get(group.pk, {})
        fields = {s: c.get(s, 0) for s in RolloutTarget.Status.values}
        RolloutGroup.objects.filter(pk=group.pk).update(total=sum(fields.values()), **fields)


# --------------------------------------------------------------------------------------------- dispatch


def _job_values(rollout: Rollout, src: str, stamp: Any, sd: tuple[str, str, str]) -> tuple[str, str, list[Any]]:
    """Columns, SELECT expressions and their parameters of the card jobs made from targets ``src``
    (``sd``: the expressions of the target's security domain AID, key version and SCP, joined for a
    key rotation).

    Every concrete column of ``CardJob`` is listed: one added later gets its model default, so a
    migration of the cards app cannot break group activation."""
    pg = connection.vendor == "postgresql"
    params_sql, params_values = _job_params(rollout, src, sd, pg)
    explicit: dict[str, tuple[str, list[Any]]] = {
        "card_id": (f"{src}.card_id", []),
        "kind": ("%s", [job_kind(rollout)]),
        "organization_id": ("%s", [rollout.bank_id]),
        "security_domain_id": (f"{src}.security_domain_id", []),
        "params": (params_sql, params_values),
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


def _job_params(rollout: Rollout, src: str, sd: tuple[str, str, str], pg: bool) -> tuple[str, list[Any]]:
    """The job's parameters, built in SQL. An upgrade or install: ``{"packages": [{"release",
    "instances"[, "install"]}], "rollout", "rollout_target"}`` (``install``: an install campaign's
    instance specifications with privileges and install parameters); a key rotation: the parameters
    ``cards.services.request_key_rotation`` gives, ``{"sd_aid", "from_kvn", "to_kvn"}`` (the next key
    version in the SD's SCP range, as ``cards.services.next_kvn``), with the rollout's."""
    obj, arr = ("jsonb_build_object", "jsonb_build_array") if pg else ("json_object", "json_array")
    rollout_id = "%s::bigint" if pg else "%s"
    if rollout.target_kind == Rollout.Target.RENEW:
        # updates.renewal.renewal_params in SQL: the ISD's next key version (next_isd_kvn) and the
        # validity of the agency's policy from the day the job is created (the same for the batch).
        _aid, kvn, scp = sd
        base = f"(CASE WHEN {scp} = 2 THEN 32 ELSE 48 END)"
        to_kvn = f"(CASE WHEN {kvn} < {base} + 15 THEN {kvn} + 1 ELSE {base} + 1 END)"
        valid_from, valid_until = validity.validity_for(rollout.bank)
        text = "%s::text" if pg else "%s"
        return (
            f"{obj}('from_kvn', {kvn}, 'to_kvn', {to_kvn}, 'valid_from', {text}, 'valid_until', {text}, "
            f"'rollout', {rollout_id}, 'rollout_target', {src}.id)",
            [valid_from.isoformat(), valid_until.isoformat(), rollout.pk],
        )
    if rollout.target_kind == Rollout.Target.ROTATE:
        aid, kvn, scp = sd
        base = f"(CASE WHEN {scp} = 2 THEN 32 ELSE 48 END)"
        to_kvn = f"(CASE WHEN {kvn} IS NOT NULL AND {kvn} < {base} + 15 THEN {kvn} + 1 ELSE {base} + 1 END)"
        return (
            f"{obj}('sd_aid', {aid}, 'from_kvn', {kvn}, 'to_kvn', {to_kvn}, "
            f"'rollout', {rollout_id}, 'rollout_target', {src}.id)",
            [rollout.pk],
        )
    instances = f"{src}.instances" if pg else f"json({src}.instances)"
    if rollout.target_kind == Rollout.Target.INSTALL:
        install = "%s::jsonb" if pg else "json(%s)"
        package = f"{obj}('release', {rollout_id}, 'instances', {instances}, 'install', {install})"
        values: list[Any] = [rollout.release_id, json.dumps(rollout.install_instances)]
    else:
        package = f"{obj}('release', {rollout_id}, 'instances', {instances})"
        values = [rollout.release_id]
    return (
        f"{obj}('packages', {arr}({package}), 'rollout', {rollout_id}, 'rollout_target', {src}.id)",
        [*values, rollout.pk],
    )


def _dispatch(
    rollout: Rollout, condition: str, params: list[Any], *, retry: bool, now: dt.datetime, limit: int | None = None
) -> int:
    """Create the card jobs of the targets matching ``condition`` (SQL over ``t``) and mark them running
    (at most ``limit`` on PostgreSQL, so one transaction never holds the audit log lock for long)."""
    stamp = _now_param(now)
    retries = "t.retries + 1" if retry else "t.retries"
    rotate = rollout.target_kind == Rollout.Target.ROTATE
    renew = rollout.target_kind == Rollout.Target.RENEW
    join_sd = " JOIN cards_securitydomain sd ON sd.id = t.security_domain_id" if rotate else ""
    # a renewal reads the card's ISD key version and SCP (updates.renewal.renewal_params)
    join_sd += " JOIN cards_card rc ON rc.id = t.card_id" if renew else ""
    sd_exprs = ("rc.isd_aid", "rc.isd_kvn", "rc.scp") if renew else ("sd.aid", "sd.key_kvn", "sd.scp")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns, values, value_params = _job_values(rollout, "c", stamp, ("c.sd_aid", "c.sd_kvn", "c.sd_scp"))
            sd_columns = ""
            if rotate or renew:
                sd_columns = f", {sd_exprs[0]} AS sd_aid, {sd_exprs[1]} AS sd_kvn, {sd_exprs[2]} AS sd_scp"
            cursor.execute(
                "WITH chosen AS ("  # noqa: S608 - constant SQL fragments; every value is a parameter
                f"  SELECT t.id, t.card_id, t.security_domain_id, t.instances{sd_columns}"
                f"  FROM updates_rollouttarget t{join_sd}"
                f"  WHERE t.rollout_id = %s AND {condition} ORDER BY t.id"
                f"  {'LIMIT %s' if limit else ''} FOR UPDATE OF t"
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
        columns, values, value_params = _job_values(rollout, "t", stamp, sd_exprs)
        cursor.execute(
            f"INSERT INTO cards_cardjob ({columns}) SELECT {values}"  # noqa: S608 - constant SQL fragments; every value is a parameter
            f" FROM updates_rollouttarget t{join_sd} WHERE t.rollout_id = %s AND {condition} ORDER BY t.id",
            [*value_params, rollout.pk, *params],
        )
        cursor.execute(
            "UPDATE updates_rollouttarget AS t SET"  # noqa: S608 - constant SQL fragments; every value is a parameter
            " job_id = (SELECT MAX(j.id) FROM cards_cardjob j WHERE j.card_id = t.card_id AND j.state = %s"
            "   AND j.kind = %s AND json_extract(j.params, '$.rollout_target') = t.id),"
            f" status = %s, attempts = t.attempts + 1, retries = {retries}, next_retry_at = NULL, updated_at = %s"
            f" WHERE t.rollout_id = %s AND {condition}",
            [
                CardJob.State.PENDING,
                job_kind(rollout),
                RolloutTarget.Status.RUNNING,
                stamp,
                rollout.pk,
                *params,
            ],
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
    new = _dispatch(
        rollout,
        f"t.group_id IN ({marks}) AND t.status = %s",
        [*group_ids, RolloutTarget.Status.PENDING],
        retry=False,
        now=now,
        limit=DISPATCH_CHUNK,
    )
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
        _email_holders_after_commit(rollout, now)
    if connection.vendor == "postgresql" and max(new, retried) >= DISPATCH_CHUNK:
        _schedule_evaluation(rollout.pk)  # more to dispatch: the next chunk in its own transaction
    return new + retried


def _activate_group(rollout: Rollout, group: RolloutGroup, now: dt.datetime, actor: Any, *, inline: bool) -> None:
    group.state = RolloutGroup.State.RUNNING
    group.started_at = now
    group.save(update_fields=["state", "started_at"])
    dispatched: int | None = None
    # Read on the package: tests lower updates.rollouts.INLINE_ACTIVATION_MAX to exercise the task path.
    if group.total <= rollouts_package.INLINE_ACTIVATION_MAX:
        dispatched = _dispatch_ready(rollout, now, [group.pk])
    else:
        _schedule_evaluation(rollout.pk)  # jobs created by the task, in chunks
    _audit(rollout, "rollout.group_started", actor, group=group.index, cards=group.total, jobs=dispatched)


def _email_holders_after_commit(rollout: Rollout, now: dt.datetime) -> None:
    """The holders of the cards given work just now hear of it once this transaction commits (a
    task: a wave of a million cards is not mailed inside the dispatch)."""
    job_ids = list(
        RolloutTarget.objects.filter(rollout=rollout, status=RolloutTarget.Status.RUNNING, updated_at=now)
        .exclude(job_id=None)
        .filter(card__holder__isnull=False)
        .exclude(card__holder__email="")
        .values_list("job_id", flat=True)
    )
    if not job_ids:
        return
    from updates.rollout_tasks import email_rollout_work

    rollout_id = rollout.pk
    transaction.on_commit(lambda: email_rollout_work.delay(rollout_id, job_ids))


def email_dispatched_work(rollout_id: int, job_ids: list[int]) -> int:
    """E-mail each holder that work waits for their card (``cards.holder_emails.work_waiting``:
    once per batch of waiting work, as their preferences say); jobs already begun are skipped."""
    sent = 0
    jobs = CardJob.objects.filter(pk__in=job_ids, state=CardJob.State.PENDING).select_related(
        "card__holder", "organization"
    )
    for job in jobs.iterator(chunk_size=500):
        with transaction.atomic():
            sent += work_waiting(job) is not None
    return sent


def _schedule_evaluation(rollout_id: int) -> None:
    from updates.rollout_tasks import evaluate_rollout

    transaction.on_commit(lambda: evaluate_rollout.delay(rollout_id))


def _withdraw_pending_jobs(rollout: Rollout, target_status: str, now: dt.datetime) -> int:
    """Cancel the rollout's card jobs not yet begun on a card (a job a card already started —
    attempts > 0 — finishes, so no card is left between versions); their targets get ``target_status``."""
    running = RolloutTarget.objects.filter(rollout=rollout, status=RolloutTarget.Status.RUNNING)
    jobs = CardJob.objects.filter(pk__in=running.values("job_id"), state=CardJob.State.PENDING, attempts=0)
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
            [
                CardJob.State.CANCELLED,
                now,
                f"rollout {rollout.pk} {rollout.state}",
                CardJob.State.PENDING,
                rollout.pk,
                RolloutTarget.Status.RUNNING,
                CardJob.State.PENDING,
                target_status,
                now,
                rollout.pk,
            ],
        )
        return max(cursor.rowcount, 0)
