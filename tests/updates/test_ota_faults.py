"""Fault injection: the connection is cut at every exchange and the card pulled at every APDU of an
enrollment that loads a real CAP; every job completes at the next presentation, the card registry
matches the platform's records, and the audit trail shows every attempt."""

from __future__ import annotations

import pytest

from agent.core import RelayError
from audit.models import AuditEntry
from cards.models import CardJob
from tests.otakit import (
    ApiServer,
    CuttingServer,
    OtaWorld,
    PullableCard,
    PulledCard,
    assert_registry_matches_records,
    build_ota_world,
    enroll,
    rolled_back,
)
from tests.shared_data import cap_file

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

EMPTY_CAP = "Empty_0102030405_8d5ac9e2_2.2.1.cap"


def enrolled_world() -> OtaWorld:
    world = build_ota_world(cap_file(EMPTY_CAP))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": "0102030405060708"}]
    world.bank.ssd_template.save()
    enroll(world)
    return world


def clean_run_size() -> tuple[int, int]:
    """(HTTP exchanges, APDUs) of an uninterrupted enrollment."""
    with rolled_back():
        world = enrolled_world()
        server = ApiServer(world.token)
        result = world.present(server=server)
        assert result.ok
        assert_registry_matches_records(world)
        return server.requests, result.apdus


def attempts(world: OtaWorld) -> list[int]:
    return [
        entry.details["attempt"]
        # Log order: the index, or before sequencing (inside a test's transaction) insertion order,
        # which is the order the sequencer will give them.
        for entry in AuditEntry.objects.filter(action="job.attempt", card_cin=world.card.cin).order_by("index", "pk")
    ]


def finish_and_check(world: OtaWorld, *, interrupted_session_reached_card: bool) -> None:
    # A cut after the server processed the last exchange leaves nothing to do.
    already_done = CardJob.objects.get(card=world.card).state == CardJob.State.DONE
    result = world.present()
    assert result.ok, result
    assert result.pending == 0
    job = CardJob.objects.get(card=world.card)
    assert job.state == CardJob.State.DONE
    assert_registry_matches_records(world)
    expected_attempts = [1, 2] if interrupted_session_reached_card and not already_done else [1]
    assert attempts(world) == expected_attempts


def test_clean_run_is_a_handful_of_round_trips() -> None:
    exchanges, apdus = clean_run_size()
    assert exchanges <= 12, exchanges
    assert apdus > exchanges


@pytest.mark.parametrize("after", [False, True], ids=["request-lost", "answer-lost"])
def test_connection_cut_at_every_exchange(after: bool) -> None:
    exchanges, _ = clean_run_size()
    for cut in range(1, exchanges + 1):
        with rolled_back():
            world = enrolled_world()
            with pytest.raises(ConnectionError):
                world.present(server=CuttingServer(world.token, cut, after=after))
            # The identification exchange (2) is where attempts are counted: a cut before the
            # server saw it leaves no attempt behind.
            reached = cut > 2 or (cut == 2 and after)
            finish_and_check(world, interrupted_session_reached_card=reached)


def first_batch_size() -> int:
    """APDUs of the session's first batch: the identification (SELECT ISD, GET DATA x2) and, when
    the platform can presume the card, the first stage's SELECT and INITIALIZE UPDATE."""
    with rolled_back():
        world = enrolled_world()
        return len(ApiServer(world.token).open_session("batch")["commands"])


@pytest.mark.parametrize("lose_response", [False, True], ids=["before-apdu", "after-apdu"])
def test_card_pulled_at_every_apdu(lose_response: bool) -> None:
    _, apdus = clean_run_size()
    identified = first_batch_size()
    for limit in range(apdus):
        with rolled_back():
            world = enrolled_world()
            transport = PullableCard(world.card_transport(), limit, lose_response=lose_response)
            with pytest.raises(PulledCard):
                world.present(transport=transport)
            # The first batch identifies the card; the attempt counts once the server has its answers.
            finish_and_check(world, interrupted_session_reached_card=limit >= identified)


def test_stale_session_is_superseded_and_cannot_continue() -> None:
    from agent.core import run_batch

    world = enrolled_world()
    server = ApiServer(world.token)
    first = server.open_session("batch")
    transport = world.card_transport()
    first = server.exchange(first["session"], first["exchange"], run_batch(transport, first["commands"]))
    assert not first["done"]  # identified, work under way; then the card is pulled
    second_result = world.present()
    assert second_result.ok
    with pytest.raises(RelayError, match="expired"):
        server.exchange(first["session"], first["exchange"], ["9000"] * len(first["commands"]))
    assert_registry_matches_records(world)
