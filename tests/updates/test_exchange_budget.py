"""What one card presentation costs the platform (issue 15): HTTP exchanges per job, and SQL
statements per exchange, counted (never timed) through the relay API with the emulated card.

* A single-stage job takes 3 exchanges, session open included: the identification carries the
  stage's SELECT and INITIALIZE UPDATE; EXTERNAL AUTHENTICATE carries GET STATUS, the script
  computed from the registry the platform expects and the verifying GET STATUS. Each further
  stage adds 2 (its opening, then the same authenticated batch).
* When the card's registry is not the one the records expect, the result is still right: a
  script the card refuses midway opens the stage again; a verifying listing that shows the
  stage undone costs one more exchange in the same channel.
* Each exchange stays within :data:`SQL_BUDGET` statements, and its audit entries go in as one
  INSERT.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agent.core import run_session
from cards import services as card_services
from cards.models import AppletInstance, CardJob, CardPackage, SecurityDomain
from tests.otakit import (
    ApiServer,
    OtaWorld,
    assert_registry_matches_records,
    build_ota_world,
    card_registry,
    enroll,
    update_applet_job,
)
from tests.shared_data import cap_file

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"
# SQL statements one relay exchange may run (session open included), whatever its phase. Counted
# on SQLite, where each exchange's transaction adds its own BEGIN/COMMIT/SAVEPOINT statements.
SQL_BUDGET = 32
LOCK_SESSION_BUDGET = 25


class CountingServer(ApiServer):
    """The relay API, keeping the SQL statements and audit INSERTs of each HTTP exchange."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.statements: list[int] = []
        self.audit_inserts: list[int] = []
        self.phases: list[str] = []

    def _count(self, call: Any) -> dict[str, Any]:
        with CaptureQueriesContext(connection) as captured:
            answer = call()
        sqls = [q["sql"] for q in captured.captured_queries]
        self.statements.append(len(sqls))
        self.audit_inserts.append(sum(1 for s in sqls if s.startswith('INSERT INTO "audit_auditentry"')))
        self.phases.append((answer.get("progress") or {}).get("phase") or "")
        return answer

    def open_session(self, mode: str) -> dict[str, Any]:
        return self._count(lambda: ApiServer.open_session(self, mode))

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        return self._count(lambda: ApiServer.exchange(self, session, number, responses))


def present(world: OtaWorld) -> CountingServer:
    server = CountingServer(world.token)
    result = run_session(world.card_transport(), server)
    assert result.ok and result.pending == 0, result
    assert server.requests == result.round_trips
    return server


def applet_world() -> OtaWorld:
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases[PACKAGE]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    return world


def bank_sd(world: OtaWorld) -> SecurityDomain:
    return SecurityDomain.objects.get(card=world.card, organization=world.bank)


def test_enrollment_takes_three_exchanges_and_two_per_further_stage() -> None:
    world = build_ota_world()
    enroll(world)  # two stages: install the SSD (ISD), put the bank's keys (SSD)
    assert present(world).requests == 3 + 2
    assert_registry_matches_records(world)


def test_enrollment_with_an_applet_takes_two_more() -> None:
    world = applet_world()
    enroll(world)  # three stages: and install the default applet (SSD, bank keys)
    server = present(world)
    assert server.requests == 3 + 2 + 2
    assert_registry_matches_records(world)
    assert INSTANCE in card_registry(world)["apps"]


@pytest.mark.parametrize("kind", ["lock", "unlock", "rotate", "update", "remove"])
def test_a_single_stage_job_takes_three_exchanges(kind: str) -> None:
    world = applet_world()
    enrollment = enroll(world)
    present(world)
    sd = bank_sd(world)
    if kind == "unlock":
        card_services.request_sd_lock(security_domain=sd, lock=True, actor=world.citizen)
        present(world)
        sd.refresh_from_db()
    if kind in ("lock", "unlock"):
        card_services.request_sd_lock(security_domain=sd, lock=kind == "lock", actor=world.citizen)
    elif kind == "rotate":
        card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    elif kind == "update":
        release = world.releases[PACKAGE]
        update_applet_job(world, sd, {"remove": [PACKAGE]})
        present(world)
        update_applet_job(world, sd, {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    else:
        card_services.request_removal(enrollment=enrollment, actor=world.citizen)
    server = present(world)
    assert server.requests == 3, server.phases
    assert CardJob.objects.filter(card=world.card).exclude(state=CardJob.State.DONE).count() == 0
    assert_registry_matches_records(world)


def test_every_exchange_stays_within_the_sql_budget_with_one_audit_insert() -> None:
    world = applet_world()
    enroll(world)
    enrolling = present(world)
    card_services.request_sd_lock(security_domain=bank_sd(world), lock=True, actor=world.citizen)
    locking = present(world)
    for server in (enrolling, locking):
        assert max(server.statements) <= SQL_BUDGET, list(zip(server.phases, server.statements, strict=True))
        assert max(server.audit_inserts) <= 1, list(zip(server.phases, server.audit_inserts, strict=True))
    # The load bench's session (bench/bench_load.py, bench/bench_session_cpu.py): a lock of a bank's
    # SSD through the ISD, 25 statements in its 3 exchanges, transactions' own included (was 43).
    assert sum(locking.statements) <= LOCK_SESSION_BUDGET, locking.statements
    print(f"\nSQL statements per exchange: enrollment {enrolling.statements}, lock {locking.statements}")


def test_records_behind_the_card_cost_exchanges_never_a_wrong_result() -> None:
    """The platform lost its record of the applet the card holds: the script computed from the
    expected registry (LOAD it again) is refused at its first command, the stage opens again and
    scripts from the card's R-MAC'd registry (nothing to do), and the records come back."""
    world = applet_world()
    enroll(world)
    present(world)
    sd = bank_sd(world)
    AppletInstance.objects.filter(security_domain=sd).delete()
    CardPackage.objects.filter(security_domain=sd).delete()
    release = world.releases[PACKAGE]
    update_applet_job(world, sd, {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    server = present(world)
    assert 3 < server.requests <= 5, server.phases
    assert CardJob.objects.get(card=world.card, kind=CardJob.Kind.UPDATE_APPLET).state == CardJob.State.DONE
    assert_registry_matches_records(world)


def test_records_ahead_of_the_card_cost_one_more_exchange() -> None:
    """A lock job whose records already say 'locked' while the card is not: the expected registry
    needs no script, so the batch after EXTERNAL AUTHENTICATE reads the registry only; the card's
    R-MAC'd listing then calls for SET STATUS, one exchange more, and the card ends locked."""
    world = applet_world()
    enroll(world)
    present(world)
    sd = bank_sd(world)
    card_services.request_sd_lock(security_domain=sd, lock=True, actor=world.citizen)
    # the records wrongly say it is locked already: the expected registry computes no script
    SecurityDomain.objects.filter(pk=sd.pk).update(lifecycle=SecurityDomain.Lifecycle.LOCKED)
    server = present(world)
    assert server.requests <= 4, server.phases
    sd.refresh_from_db()
    assert sd.lifecycle == SecurityDomain.Lifecycle.LOCKED
    assert_registry_matches_records(world)


def test_the_carried_opening_is_ignored_when_the_first_job_changed_meanwhile() -> None:
    """The identification batch carries the opening of the job first at session open; if that job
    is no longer first when the card's answers arrive, those (unauthenticated) answers are
    ignored and the real first stage opens in its own exchange."""
    from agent.core import run_batch

    world = applet_world()
    enroll(world)
    present(world)
    sd = bank_sd(world)
    first = card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    card_services.request_sd_lock(security_domain=sd, lock=True, actor=world.citizen)
    server = CountingServer(world.token)
    transport = world.card_transport()
    answer = server.open_session("batch")
    assert [c["label"] for c in answer["commands"]][-1].startswith("INIT-UPD key set 31")  # the rotation's
    CardJob.objects.filter(pk=first.pk).update(state=CardJob.State.FAILED, last_error="cancelled by the bank")
    while not answer["done"]:
        answer = server.exchange(answer["session"], answer["exchange"], run_batch(transport, answer["commands"]))
    assert answer["result"]["pending"] == 0 and [j["state"] for j in answer["result"]["jobs"]] == ["done"]
    assert server.requests == 4, server.phases  # the lock opened in an exchange of its own
    sd.refresh_from_db()
    assert sd.lifecycle == SecurityDomain.Lifecycle.LOCKED and sd.key_kvn == 0x31
    assert_registry_matches_records(world)
