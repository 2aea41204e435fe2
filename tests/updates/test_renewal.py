"""Renewal of a card in place (issue 19): PUT KEY of fresh ISD keys and STORE DATA of the validity
(5F25/5F24) in the ISD, proven only by R-MAC'd answers; a card pulled anywhere in a renewal
converges at its next presentation; an expired card is refused new banks but can be renewed."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail

from agent.core import RelayError
from audit.models import AuditEntry
from cards import validity
from cards.models import Card, CardJob, CitizenEmail, SecurityDomain
from cardsim.listing import render
from cardsim.state import key_versions
from cardsim.state import validity as card_validity
from cardsim.transport import InProcessCard
from ecard.errors import ServiceError
from gp.apdu import SW
from gp.validity import TAG_EXPIRATION_DATE
from issuers import custody
from issuers.custody_models import KeySet
from tests.factories import make_user
from tests.otakit import (
    ForgingRelay,
    OtaWorld,
    PullableCard,
    PulledCard,
    build_ota_world,
    enroll,
    open_scp03,
    rolled_back,
)
from updates import ota, renewal

pytestmark = pytest.mark.django_db

ISD = "A000000151000000"


def expire(world: OtaWorld, *, days_ago: int = 1) -> None:
    Card.objects.filter(pk=world.card.pk).update(valid_until=validity.today() - dt.timedelta(days=days_ago))
    world.card.refresh_from_db()


def near_expiry(world: OtaWorld, days: int = 30) -> None:
    Card.objects.filter(pk=world.card.pk).update(valid_until=validity.today() + dt.timedelta(days=days))
    world.card.refresh_from_db()


def card_state(world: OtaWorld) -> InProcessCard:
    return InProcessCard(world.card.state_file)


def renewed_world() -> tuple[OtaWorld, CardJob]:
    world = build_ota_world()
    near_expiry(world)
    job = renewal.request_renewal(card=world.card, actor=world.citizen)
    return world, job


def test_a_new_card_is_valid_for_the_policy_and_its_isd_holds_the_dates() -> None:
    world = build_ota_world()
    card = world.card
    assert card.valid_from == validity.today()
    assert card.valid_until == validity.add_years(validity.today(), 5)
    # the emulated card got the same dates in its ISD at personalisation (5F25/5F24)
    assert card_validity(card_state(world).state) == (card.valid_from, card.valid_until)
    assert f"until {card.valid_until.isoformat()}" in render(card_state(world).state)


def test_renewal_rotates_the_isd_keys_and_stores_the_validity() -> None:
    world, job = renewed_world()
    card = world.card
    old_kvn = card.isd_kvn
    assert job.params["to_kvn"] == old_kvn + 1
    expected_until = validity.add_years(validity.today(), 5)
    mail.outbox.clear()

    result = world.present()

    assert result.ok, result
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    card.refresh_from_db()
    assert card.key_scheme == ota.STORED_ISD_KEYS and card.isd_kvn == old_kvn + 1
    assert card.valid_until == expected_until
    assert SecurityDomain.objects.get(card=card, is_isd=True).key_kvn == old_kvn + 1
    state = card_state(world).state
    # the card's own state: the new validity in its ISD, the new key version instead of the old
    assert card_validity(state)[1] == expected_until
    versions = key_versions(state, ISD)
    assert old_kvn + 1 in versions and old_kvn not in versions
    # the new keys open the ISD (and the old diversified keys no longer do)
    stored = ota.isd_keyset(card, card.isd_kvn)
    assert stored is not None
    transport = card_state(world)
    channel = open_scp03(transport, ISD, custody.load_static_keys(stored))
    answer = channel.unwrap(transport.transmit(channel.wrap(bytes.fromhex("80CA5F2400"))))
    assert answer[-2:] == b"\x90\x00" and answer[3:6] == bytes.fromhex(expected_until.strftime("%y%m%d"))
    # every step is in the transparency log
    actions = set(AuditEntry.objects.filter(card_cin=card.cin).values_list("action", flat=True))
    assert {"card.renewal_requested", "job.queued", "card.isd_keys_rotated", "card.renewed", "job.done"} <= actions
    renewed = AuditEntry.objects.get(card_cin=card.cin, action="card.renewed")
    assert renewed.details["valid_until"] == expected_until.isoformat()
    # the holder is told, once
    assert CitizenEmail.objects.filter(card=card, kind=CitizenEmail.Kind.RENEWED).count() == (
        1 if world.citizen.email else 0
    )


def test_a_second_renewal_replaces_the_stored_keys_and_retires_the_first_set() -> None:
    world, _job = renewed_world()
    assert world.present().ok
    world.card.refresh_from_db()
    first = world.card.isd_kvn
    near_expiry(world, days=10)
    job = renewal.request_renewal(card=world.card, actor=world.citizen)
    assert job.params["from_kvn"] == first and job.params["to_kvn"] == first + 1

    assert world.present().ok

    world.card.refresh_from_db()
    assert world.card.isd_kvn == first + 1
    assert set(key_versions(card_state(world).state, ISD)) & {first, first + 1} == {first + 1}
    states = dict(
        KeySet.objects.filter(card_cin=world.card.cin, sd_aid=ISD, purpose=KeySet.Purpose.SCP_STATIC).values_list(
            "kvn", "state"
        )
    )
    assert states == {first: KeySet.State.SUPERSEDED, first + 1: KeySet.State.ACTIVE}


def clean_apdus() -> list[int]:
    """The INS bytes of an uninterrupted renewal's APDUs, in order."""
    with rolled_back():
        world, _job = renewed_world()
        relay = ForgingRelay(world.card_transport())
        assert world.present(transport=relay).ok
        return relay.seen


@pytest.mark.slow
@pytest.mark.parametrize("lose_response", [False, True])
def test_a_card_pulled_at_any_apdu_of_a_renewal_converges_at_its_next_presentation(lose_response: bool) -> None:
    apdus = len(clean_apdus())
    for limit in range(apdus):
        with rolled_back():
            world, job = renewed_world()
            old_kvn = world.card.isd_kvn
            pulled = PullableCard(world.card_transport(), limit, lose_response=lose_response)
            with pytest.raises(PulledCard):
                world.present(transport=pulled)
            # nothing unproven was recorded: the old keys and dates, or the proven new ones
            world.card.refresh_from_db()
            assert world.card.isd_kvn in (old_kvn, old_kvn + 1), limit
            if world.card.valid_until == validity.add_years(validity.today(), 5):
                assert card_validity(card_state(world).state)[1] == world.card.valid_until, limit

            assert world.present().ok, limit

            job.refresh_from_db()
            assert job.state == CardJob.State.DONE, (limit, job.last_error)
            world.card.refresh_from_db()
            state = card_state(world).state
            assert world.card.isd_kvn == old_kvn + 1 and world.card.key_scheme == ota.STORED_ISD_KEYS
            assert set(key_versions(state, ISD)) & {old_kvn, old_kvn + 1} == {old_kvn + 1}, limit
            assert card_validity(state)[1] == world.card.valid_until == validity.add_years(validity.today(), 5)


def test_a_relay_forging_the_read_back_records_nothing() -> None:
    seen = clean_apdus()
    read_back = len(seen) - 1 - seen[::-1].index(0xCA)  # GET DATA 5F24, the renewal's last APDU
    world, job = renewed_world()
    before = world.card.valid_until
    forged_day = "991231"  # 2099-12-31, answered without an R-MAC
    relay = ForgingRelay(
        world.card_transport(), at=read_back, answer=bytes.fromhex(f"{TAG_EXPIRATION_DATE:X}03{forged_day}9000")
    )
    with pytest.raises(RelayError, match="integrity"):  # the session is rejected
        world.present(transport=relay)
    assert relay.forged == 1
    world.card.refresh_from_db()
    assert world.card.valid_until == before  # the forged answer proved nothing
    assert not AuditEntry.objects.filter(card_cin=world.card.cin, action="card.renewed").exists()

    assert world.present().ok  # the next presentation converges on what the card R-MACs

    job.refresh_from_db()
    world.card.refresh_from_db()
    assert job.state == CardJob.State.DONE
    assert world.card.valid_until == validity.add_years(validity.today(), 5) != dt.date(2099, 12, 31)


def test_a_relay_refusing_the_read_back_gets_no_record_either() -> None:
    seen = clean_apdus()
    read_back = len(seen) - 1 - seen[::-1].index(0xCA)
    world, _job = renewed_world()
    before = world.card.valid_until
    relay = ForgingRelay(world.card_transport(), at=read_back, answer=SW.REFERENCED_DATA_NOT_FOUND.to_bytes(2, "big"))
    world.present(transport=relay)
    assert relay.forged == 1
    world.card.refresh_from_db()
    # The bare 6A88 proves nothing: the engine opened the ISD again (with the new keys: the old
    # ones answer 6A88 now) and had the card R-MAC its validity itself; the script is idempotent.
    assert world.card.valid_until != before
    assert card_validity(card_state(world).state)[1] == world.card.valid_until
    assert AuditEntry.objects.filter(card_cin=world.card.cin, action="card.renewed").count() == 1


def test_an_expired_card_is_refused_new_banks_but_its_holder_can_renew_it() -> None:
    world = build_ota_world()
    expire(world)
    with pytest.raises(ServiceError) as refused:
        enroll(world)
    assert refused.value.code == "expired"
    assert not CardJob.objects.filter(card=world.card, kind=CardJob.Kind.ENROLL_BANK).exists()

    job = renewal.request_renewal(card=world.card, actor=world.citizen)
    assert world.present().ok
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE
    world.card.refresh_from_db()
    assert not validity.is_expired(world.card)
    enroll(world)  # renewed: banks may be added again
    assert world.present().ok


def test_who_may_renew_and_when() -> None:
    world = build_ota_world()
    # not yet near its expiry: the holder waits for the renewal window, the agency may renew
    with pytest.raises(ServiceError) as early:
        renewal.request_renewal(card=world.card, actor=world.citizen)
    assert early.value.code == "state"
    stranger = make_user("stranger")
    near_expiry(world)
    with pytest.raises(ServiceError) as foreign:
        renewal.request_renewal(card=world.card, actor=stranger)
    assert foreign.value.code == "forbidden"
    renewal.request_renewal(card=world.card, actor=world.citizen)
    with pytest.raises(ServiceError) as twice:
        renewal.request_renewal(card=world.card, actor=world.citizen)
    assert twice.value.code == "duplicate"
    CardJob.objects.filter(card=world.card).update(state=CardJob.State.CANCELLED)
    Card.objects.filter(pk=world.card.pk).update(standing=Card.Standing.BLOCKED)
    with pytest.raises(ServiceError) as blocked:
        renewal.request_renewal(card=world.card, actor=world.citizen)
    assert blocked.value.code == "state"
