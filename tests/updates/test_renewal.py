"""Renewal of a card in place (issue 19): PUT KEY of fresh ISD keys and STORE DATA of the validity
(5F25/5F24) in the ISD, proven only by R-MAC'd answers; a card pulled anywhere in a renewal
converges at its next presentation; an expired card is refused new banks but can be renewed."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail

from audit.models import AuditEntry
from cards import services as card_services
from cards import validity
from cards.models import Card, CardJob, CitizenEmail, SecurityDomain
from cardsim.listing import render
from cardsim.state import key_versions, validity as card_validity
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
