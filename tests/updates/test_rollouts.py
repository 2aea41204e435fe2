"""Rollouts without cards in readers: set-based planning, groups, thresholds, retries with backoff,
start time, four eyes, pause/resume/cancel, the API with its isolation, the beat task.

Card results are produced by the engine's own transition functions (``complete_job``,
``fail_job``, ``retry_job``), which send ``job_state_changed`` exactly as in a relay session.
"""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards.models import AppletInstance, Card, CardJob, SecurityDomain
from ecard.errors import ServiceError
from tests.factories import World, build_world
from updates import rollouts
from updates.demo_cap import build_cap
from updates.models import Release, Rollout, RolloutGroup, RolloutTarget
from updates.ota import complete_job, fail_job, retry_job
from updates.releases import create_release
from updates.rollout_tasks import evaluate_rollout, rollouts_tick

pytestmark = pytest.mark.django_db


def package_of(world: World) -> str:
    return world.applets["alpha@card1"].package_aid


def release_for(world: World, version: tuple[int, int] = (2, 0)) -> Release:
    package = package_of(world)
    cap = build_cap(package, [package + "01"], version, name="alpha.app")
    return create_release(bank=world.alpha, cap_bytes=cap, filename="a.cap", actor=world.users["alpha_op"])


def add_cards(
    world: World, count: int, *, version: str = "1.0", bank=None, lifecycle: str = "SECURED", sd_state: str = "active"
) -> list[Card]:
    """``count`` cards carrying the bank's applet at ``version``, created in bulk."""
    bank = bank or world.alpha
    template = world.applets[f"{bank.slug}@card{1 if bank == world.alpha else 2}"]
    sd_aid = template.security_domain.aid
    cards = Card.objects.bulk_create(
        [
            Card(
                cin=secrets.token_hex(8).upper(),
                serial=secrets.token_hex(8),
                kdd=secrets.token_hex(10).upper(),
                issued_by=world.agency,
                lifecycle=lifecycle,
            )
            for _ in range(count)
        ]
    )
    cards = list(Card.objects.filter(cin__in=[c.cin for c in cards]))
    sds = SecurityDomain.objects.bulk_create(
        [
            SecurityDomain(card=card, organization=bank, aid=sd_aid, state=sd_state, lifecycle="PERSONALIZED")
            for card in cards
        ]
    )
    sds = list(SecurityDomain.objects.filter(card__in=cards, organization=bank))
    AppletInstance.objects.bulk_create(
        [
            AppletInstance(
                security_domain=sd,
                package_aid=template.package_aid,
                package_version=version,
                module_aid=template.module_aid,
                instance_aid=template.instance_aid,
            )
            for sd in sds
        ]
    )
    return cards


def client_for(world: World, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[username])
    return client


def make(world: World, release: Release, **kwargs) -> Rollout:
    kwargs.setdefault("groups", ["100%"])
    return rollouts.create_rollout(bank=world.alpha, release=release, actor=world.users["alpha_op"], **kwargs)


def jobs_of(rollout: Rollout, state: str | None = None):
    qs = CardJob.objects.filter(pk__in=RolloutTarget.objects.filter(rollout=rollout).values("job_id"))
    return qs.filter(state=state) if state else qs


def run(job: CardJob, outcome: str = "done", error: str = "6A84 not enough memory") -> None:
    """What the engine does with a job when the card is presented (inside one transaction)."""
    from django.db import transaction

    with transaction.atomic():
        job = CardJob.objects.select_related("card", "security_domain", "organization").get(pk=job.pk)
        job.attempts += 1
        job.state = CardJob.State.RUNNING
        job.save(update_fields=["attempts", "state"])
        {
            "done": lambda: complete_job(job),
            "failed": lambda: fail_job(job, error),
            "retry": lambda: retry_job(job, error),
        }[outcome]()


# ------------------------------------------------------------------------------------------ groups


@pytest.mark.parametrize(
    ("spec", "texts"),
    [
        (["1%", "10%", "100%"], ["1%", "10%", "100%"]),
        (["0.5%", "100%"], ["0.5%", "100%"]),
        ([5, "50", "100%"], ["5", "50", "100%"]),
        (["100%"], ["100%"]),
    ],
)
def test_group_specs(spec, texts) -> None:
    assert [b.text for b in rollouts.parse_groups(spec)] == texts


@pytest.mark.parametrize(
    "spec",
    [
        [],
        ["10%"],
        ["50%", "10%", "100%"],
        ["0%", "100%"],
        ["101%"],
        [0, "100%"],
        [10, 5, "100%"],
        ["ten", "100%"],
        [True, "100%"],
        "100%",
        ["1%"] * 25,
    ],
)
def test_bad_group_specs(spec) -> None:
    with pytest.raises(ServiceError):
        rollouts.parse_groups(spec)


# ------------------------------------------------------------------------------------------ planning


def test_planning_targets_the_banks_cards_at_the_version_in_cumulative_groups(world: World) -> None:
    release = release_for(world)
    add_cards(world, 98)  # + card1 and card3 from the world: 100 at v1.0
    add_cards(world, 7, version="1.1")
    add_cards(world, 5, lifecycle="CARD_LOCKED")  # not updatable: left out
    add_cards(world, 4, sd_state="removed")
    add_cards(world, 6, bank=world.beta)
    rollout = make(world, release, from_version="1.0", groups=["1%", "10%", "100%"])
    assert rollout.total == 100 and rollout.state == Rollout.State.READY
    groups = list(rollout.groups.order_by("index"))
    assert [(g.bound, g.total, g.pending) for g in groups] == [("1%", 1, 1), ("10%", 9, 9), ("100%", 90, 90)]
    targets = RolloutTarget.objects.filter(rollout=rollout)
    assert targets.count() == 100 and not targets.exclude(status="pending").exists()
    assert set(targets.values_list("security_domain__organization", flat=True)) == {world.alpha.pk}
    assert {tuple(t) for t in targets.values_list("instances", flat=True)} == {
        (world.applets["alpha@card1"].instance_aid,)
    }
    entry = AuditEntry.objects.get(action="rollout.created", subject_id=str(rollout.pk))
    assert entry.details["targets"] == 100 and entry.actor_name == "alpha_op"


def test_planning_is_set_based(world: World) -> None:
    """The same number of SQL statements for 60 and for 350 cards: no per-card loop."""
    counts = []
    for number, extra in enumerate((8, 50, 290)):
        add_cards(world, extra)
        release = release_for(world, (2, number))
        with CaptureQueriesContext(connection) as planned:
            rollout = make(world, release, groups=["10%", "50%", "100%"])
        with CaptureQueriesContext(connection) as started:
            rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
        counts.append((len(planned), len(started)))
        assert jobs_of(rollout).count() == rollout.groups.get(index=1).total
        rollouts.cancel_rollout(rollout=rollout, actor=world.users["alpha_op"])
        AppletInstance.objects.filter(security_domain__organization=world.alpha).update(package_version="1.0")
    assert counts[1] == counts[2], counts  # (the first run also warms per-user caches)
    insert = [
        q["sql"]
        for q in planned.captured_queries
        if "INSERT INTO" in q["sql"].upper() and "updates_rollouttarget" in q["sql"]
    ]
    assert len(insert) == 1 and "ROW_NUMBER() OVER" in insert[0]


def test_any_other_version_and_explicit_card_lists(world: World) -> None:
    release = release_for(world)
    newer = add_cards(world, 3, version="1.1")
    assert make(world, release).total == 5  # 2 at v1.0 from the world, 3 at v1.1
    Rollout.objects.update(state=Rollout.State.CANCELLED)
    listed = make(world, release, cins=[newer[0].cin.lower(), world.cards["card1"].cin])
    assert listed.total == 2 and listed.target_kind == "cards"
    Rollout.objects.update(state=Rollout.State.CANCELLED)
    with pytest.raises(ServiceError, match=r"1 of the listed cards do not carry .*: " + world.cards["card2"].cin):
        make(world, release, cins=[world.cards["card1"].cin, world.cards["card2"].cin])
    with pytest.raises(ServiceError, match="no card carries"):
        make(world, release, from_version="0.9")
    assert not Rollout.objects.filter(state="ready").exists()


def test_one_open_rollout_per_package(world: World) -> None:
    release = release_for(world)
    make(world, release)
    with pytest.raises(ServiceError, match="still ready") as refused:
        make(world, release_for(world, (3, 0)))
    assert refused.value.is_conflict


# ------------------------------------------------------------------------------------------ running


def test_groups_advance_at_the_success_threshold(world: World) -> None:
    add_cards(world, 18)
    rollout = make(world, release_for(world), groups=["10%", "50%", "100%"], success_threshold=50)
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    first = list(jobs_of(rollout, "pending"))
    assert len(first) == 2
    job = first[0]
    assert job.kind == CardJob.Kind.UPDATE_APPLET and job.organization == world.alpha
    assert job.params["packages"] == [
        {"release": rollout.release_id, "instances": [world.applets["alpha@card1"].instance_aid]}
    ]
    run(first[0])  # 1 of 2 = 50%: group 2 starts at once, inside the card result's transaction
    assert jobs_of(rollout, "pending").count() == 1 + 8
    group2 = rollout.groups.get(index=2)
    assert group2.state == RolloutGroup.State.RUNNING and group2.running == 8
    while jobs_of(rollout, "pending").exists():
        for job in list(jobs_of(rollout, "pending")):
            run(job)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.COMPLETED
    assert [g.succeeded for g in rollout.groups.order_by("index")] == [2, 8, 10]
    actions = list(
        AuditEntry.objects.filter(subject_type="rollout", subject_id=str(rollout.pk)).values_list("action", flat=True)
    )
    assert actions.count("rollout.group_started") == 3 and actions.count("rollout.group_done") == 3
    assert actions.count("rollout.card_result") == 20 and actions[-1] == "rollout.completed"


def test_failed_cards_are_retried_with_backoff_then_given_up(world: World) -> None:
    add_cards(world, 8)
    rollout = make(world, release_for(world), error_threshold=50, retry_count=2, retry_backoff=60)
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    job = jobs_of(rollout, "pending").first()
    before = timezone.now()
    run(job, "retry")  # a failed attempt: the rollout takes the retry over (count, backoff)
    target = RolloutTarget.objects.get(job=job)
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED and "6A84" in job.last_error
    assert target.status == "failed" and "6A84" in target.last_error and target.retries == 0
    assert before + dt.timedelta(seconds=59) < target.next_retry_at <= timezone.now() + dt.timedelta(seconds=60)
    assert rollouts_tick.delay().get() == 1  # not due yet: nothing
    assert RolloutTarget.objects.get(pk=target.pk).status == "failed"
    RolloutTarget.objects.filter(pk=target.pk).update(next_retry_at=timezone.now() - dt.timedelta(seconds=1))
    rollouts.tick()
    target.refresh_from_db()
    assert target.status == "running" and target.attempts == 2 and target.retries == 1 and target.job_id != job.pk
    run(target.job, "failed")
    target.refresh_from_db()
    wait = target.next_retry_at - timezone.now()
    assert dt.timedelta(seconds=110) < wait <= dt.timedelta(seconds=120)  # doubled
    RolloutTarget.objects.filter(pk=target.pk).update(next_retry_at=timezone.now())
    evaluate_rollout.delay(rollout.pk)
    target.refresh_from_db()
    run(target.job, "failed")
    target.refresh_from_db()
    assert target.status == "failed" and target.attempts == 3 and target.next_retry_at is None  # budget spent
    for job in list(jobs_of(rollout, "pending")):
        run(job)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.PAUSED  # group done below its 100% success threshold
    assert "9 of 10 cards succeeded" in rollout.pause_reason
    body = client_for(world, "alpha_op").get(f"/api/v1/rollouts/{rollout.pk}/failures/").json()
    assert body == {"failed": 1, "reasons": [{"reason": "6A84 not enough memory", "cards": 1, "attempts": 3}]}
    # Resume (after a fix): the finished group runs again, the failed card gets a fresh retry budget.
    rollouts.resume_rollout(rollout=rollout, actor=world.users["alpha_op"])
    target.refresh_from_db()
    assert target.status == "running" and target.attempts == 4 and target.retries == 1
    run(target.job)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.COMPLETED
    assert rollout.groups.get().succeeded == 10


def test_error_threshold_pauses_and_withdraws_jobs_not_begun(world: World) -> None:
    add_cards(world, 8)
    rollout = make(world, release_for(world), error_threshold=20, retry_backoff=600)
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    jobs = list(jobs_of(rollout, "pending"))
    run(jobs[0], "failed")
    assert Rollout.objects.get(pk=rollout.pk).state == Rollout.State.RUNNING
    CardJob.objects.filter(pk=jobs[5].pk).update(state=CardJob.State.RUNNING, attempts=1)  # in a session now
    run(jobs[1], "failed")
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.PAUSED and "2 of 10 cards failed" in rollout.pause_reason
    assert jobs_of(rollout, "cancelled").count() == 7
    assert CardJob.objects.get(pk=jobs[5].pk).state == CardJob.State.RUNNING  # it finishes
    group = rollout.groups.get()
    assert (group.pending, group.running, group.failed) == (7, 1, 2)
    run(jobs[5])  # the card in a session completes while paused
    assert rollout.groups.get().succeeded == 1
    entry = AuditEntry.objects.get(action="rollout.paused", subject_id=str(rollout.pk))
    assert entry.actor_type == "system" and entry.details["jobs_withdrawn"] == 7
    rollouts.resume_rollout(rollout=rollout, actor=world.users["alpha_op"])
    group = rollout.groups.get()
    assert (group.pending, group.running, group.failed, group.succeeded) == (0, 9, 0, 1)


def test_cancel_leaves_cards_consistent(world: World) -> None:
    add_cards(world, 8)
    rollout = make(world, release_for(world), groups=["50%", "100%"])
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    jobs = list(jobs_of(rollout, "pending"))
    assert len(jobs) == 5
    run(jobs[0])
    CardJob.objects.filter(pk=jobs[1].pk).update(state=CardJob.State.RUNNING, attempts=1)  # in a session
    CardJob.objects.filter(pk=jobs[2].pk).update(attempts=1)  # begun earlier, interrupted: may finish
    response = client_for(world, "alpha_op").post(
        f"/api/v1/rollouts/{rollout.pk}/cancel/", {"reason": "stop"}, format="json"
    )
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    states = {j.pk: CardJob.objects.get(pk=j.pk).state for j in jobs}
    assert states[jobs[0].pk] == "done" and states[jobs[1].pk] == "running" and states[jobs[2].pk] == "pending"
    assert [states[j.pk] for j in jobs[3:]] == ["cancelled", "cancelled"]
    overall = response.json()["progress"]["overall"]
    assert (overall["succeeded"], overall["running"], overall["cancelled"]) == (1, 2, 7)
    run(jobs[1])  # the running job finishes and is counted
    run(jobs[2], "failed")
    overall = client_for(world, "alpha_op").get(f"/api/v1/rollouts/{rollout.pk}/").json()["progress"]["overall"]
    assert (overall["succeeded"], overall["failed"], overall["running"], overall["cancelled"]) == (2, 1, 0, 7)
    assert RolloutTarget.objects.get(job=jobs[2]).next_retry_at is None  # no retries after a cancel
    entry = AuditEntry.objects.get(action="rollout.cancelled", subject_id=str(rollout.pk))
    assert entry.reason == "stop" and entry.details["jobs_cancelled"] == 2 and entry.details["cards_not_reached"] == 5
    assert client_for(world, "alpha_op").post(f"/api/v1/rollouts/{rollout.pk}/resume/").status_code == 409


def test_start_time_and_the_beat_task(world: World) -> None:
    rollout = make(world, release_for(world), start_at=timezone.now() + dt.timedelta(hours=1))
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.SCHEDULED and not jobs_of(rollout).exists()
    rollouts.tick()
    assert not jobs_of(rollout).exists()
    Rollout.objects.filter(pk=rollout.pk).update(start_at=timezone.now() - dt.timedelta(seconds=1))
    rollouts_tick.delay()
    rollouts_tick.delay()  # idempotent
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.RUNNING and jobs_of(rollout).count() == 2
    beat = settings.CELERY_BEAT_SCHEDULE
    assert beat["rollouts-tick"]["task"] == "updates.rollouts_tick" and "audit-checkpoint" in beat


def test_large_groups_are_activated_by_the_task(world: World, monkeypatch) -> None:
    monkeypatch.setattr(rollouts, "INLINE_ACTIVATION_MAX", 3)
    add_cards(world, 8)
    rollout = make(world, release_for(world), groups=["10%", "100%"])
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=False) as callbacks:
        for job in list(jobs_of(rollout, "pending")):
            run(job)
    assert rollout.groups.get(index=2).state == "running" and jobs_of(rollout).count() == 1
    for callback in callbacks:
        callback()  # the queued evaluation (eager Celery in tests)
    assert jobs_of(rollout, "pending").count() == 9


# ------------------------------------------------------------------------------------------ API


def test_rollout_api_four_eyes_and_isolation(world: World) -> None:
    release = release_for(world)
    alpha = client_for(world, "alpha_op")
    response = alpha.post(
        "/api/v1/rollouts/", {"release": release.pk, "groups": ["50%", "100%"], "require_approval": True}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    rollout_id = body["id"]
    assert body["state"] == "awaiting_approval" and body["bank"] == "alpha" and body["to_version"] == "2.0"
    assert body["progress"]["overall"]["total"] == 2 and body["progress"]["overall"]["pending"] == 2
    assert alpha.post(f"/api/v1/rollouts/{rollout_id}/approve/").status_code == 403  # not the creator
    assert client_for(world, "alpha_auditor").post(f"/api/v1/rollouts/{rollout_id}/approve/").status_code == 403
    for username in ("beta_op", "beta_admin", "citizen1", "outsider"):
        client = client_for(world, username)
        for action in ("approve", "start", "pause", "resume", "cancel"):
            assert client.post(f"/api/v1/rollouts/{rollout_id}/{action}/").status_code in (403, 404), username
        for path in ("", "cards/", "failures/"):
            assert client.get(f"/api/v1/rollouts/{rollout_id}/{path}").status_code == 404, (username, path)
        assert client.get("/api/v1/rollouts/").json()["count"] == 0
    assert (
        client_for(world, "beta_op")
        .post("/api/v1/rollouts/", {"release": release.pk, "groups": ["100%"]}, format="json")
        .status_code
        == 400
    )
    assert client_for(world, "regulator").get(f"/api/v1/rollouts/{rollout_id}/").status_code == 200
    assert client_for(world, "agency_op").post(f"/api/v1/rollouts/{rollout_id}/pause/").status_code == 403
    approved = client_for(world, "alpha_admin").post(f"/api/v1/rollouts/{rollout_id}/approve/").json()
    assert approved["state"] == "ready" and approved["approved_by"] == "alpha_admin"
    assert alpha.post(f"/api/v1/rollouts/{rollout_id}/start/").json()["state"] == "running"
    assert (
        alpha.post(f"/api/v1/rollouts/{rollout_id}/pause/", {"reason": "weekend"}, format="json").json()["pause_reason"]
        == "weekend"
    )
    assert alpha.post(f"/api/v1/rollouts/{rollout_id}/pause/").status_code == 409
    assert alpha.post(f"/api/v1/rollouts/{rollout_id}/resume/").json()["state"] == "running"
    cards = alpha.get(f"/api/v1/rollouts/{rollout_id}/cards/").json()
    assert cards["count"] == 2 and sorted(c["status"] for c in cards["results"]) == ["pending", "running"]
    assert {c["cin"] for c in cards["results"]} == {world.cards["card1"].cin, world.cards["card3"].cin}
    assert alpha.get(f"/api/v1/rollouts/{rollout_id}/cards/?status=bogus").status_code == 400
    actions = set(
        AuditEntry.objects.filter(subject_type="rollout", subject_id=str(rollout_id)).values_list("action", flat=True)
    )
    assert {"rollout.created", "rollout.approved", "rollout.started", "rollout.paused", "rollout.resumed"} <= actions


def test_rollout_api_refuses_bad_requests_with_problems(world: World) -> None:
    release = release_for(world)
    alpha = client_for(world, "alpha_op")
    for payload, fragment in (
        ({"release": release.pk, "groups": ["50%"]}, "last group must be 100%"),
        ({"release": release.pk, "groups": ["100%"], "from_version": "2.0"}, "already be at version"),
        ({"release": release.pk, "groups": ["100%"], "from_version": "x"}, "major.minor"),
        ({"release": release.pk, "groups": ["100%"], "error_threshold": 0}, "error_threshold"),
        ({"release": 999999, "groups": ["100%"]}, "no such release"),
        ({"release": release.pk, "groups": ["100%"], "cins": ["00"]}, "do not carry"),
    ):
        response = alpha.post("/api/v1/rollouts/", payload, format="json")
        assert response.status_code == 400, (payload, response.content)
        assert response["Content-Type"].startswith("application/problem+json")
        assert fragment in response.json()["detail"], response.json()
    assert not Rollout.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_card_results_and_operator_actions_do_not_deadlock() -> None:
    """Card exchanges (audit log lock first, then the rollout through the signal) and operator
    pause/resume (rollout first in a naive order) running at once on PostgreSQL."""
    import threading

    from django.db import connections, transaction

    from audit.services import record_event

    if connection.vendor != "postgresql":
        pytest.skip("row-lock ordering needs PostgreSQL")
    world = build_world()
    add_cards(world, 40)
    rollout = make(world, release_for(world), error_threshold=100)
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    jobs = list(jobs_of(rollout, "pending"))
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def cards() -> None:
        try:
            start.wait()
            for job in jobs:
                with transaction.atomic():
                    job = CardJob.objects.select_related("card", "organization").get(pk=job.pk)
                    record_event(
                        action="test.receipt",
                        subject_type="card_job",
                        subject_id=job.pk,
                        card_cin=job.card.cin,
                        actor_type="agent",
                    )
                    if job.state != CardJob.State.CANCELLED:
                        complete_job(job)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def operator() -> None:
        try:
            start.wait()
            for _ in range(8):
                rollouts.pause_rollout(rollout=rollout, actor=world.users["alpha_op"])
                rollouts.resume_rollout(rollout=rollout, actor=world.users["alpha_op"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=cards), threading.Thread(target=operator)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    group = rollout.groups.get()
    targets = RolloutTarget.objects.filter(rollout=rollout)
    assert group.total == 42 == targets.count()
    for status in ("pending", "running", "succeeded", "failed", "cancelled"):
        assert getattr(group, status) == targets.filter(status=status).count(), status


def test_a_card_replaced_mid_rollout_leaves_the_rollout_counting_it_cancelled(world: World) -> None:
    from cards import lifecycle

    rollout = make(world, release_for(world))
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    card = world.cards["card1"]
    target = RolloutTarget.objects.get(rollout=rollout, card=card)
    assert target.status == RolloutTarget.Status.RUNNING
    group = rollout.groups.get(index=1)
    running = group.running
    lifecycle.replace_card(old_card=card, actor=world.users["agency_op"], reason="lost on holiday")
    target.refresh_from_db()
    group.refresh_from_db()
    assert CardJob.objects.get(pk=target.job_id).state == CardJob.State.CANCELLED
    assert target.status == RolloutTarget.Status.CANCELLED and "replaced" in target.last_error
    assert (group.running, group.cancelled) == (running - 1, 1)
    result = AuditEntry.objects.filter(action="rollout.card_result", card_cin=card.cin).get()
    assert result.details["status"] == "cancelled"


def test_holders_hear_that_rollout_work_waits_for_their_cards(world: World, django_capture_on_commit_callbacks) -> None:
    from django.core import mail

    holder = world.cards["card1"].holder
    holder.email = "citizen1@example.org"
    holder.save(update_fields=["email"])
    rollout = make(world, release_for(world))
    with django_capture_on_commit_callbacks(execute=True):
        rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    assert RolloutTarget.objects.filter(rollout=rollout, card=world.cards["card1"], job__isnull=False).exists()
    assert [(m.subject, m.to) for m in mail.outbox] == [("Work waits for your card", ["citizen1@example.org"])]
    assert "Alpha Bank" in mail.outbox[0].body
