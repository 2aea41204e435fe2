"""Card validity (issue 19): the agency's policy (service, audit, API), new cards valid for it,
expiry and the cards nearing it, the holders' warning e-mail (once per card and expiry date), the
YYMMDD BCD data objects and the emulated ISD that stores them."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards import services as card_services
from cards import validity
from cards.models import Card, CitizenEmail, NotificationPreferences
from cardsim import store
from cardsim.card import Card as EmulatedCard
from cardsim.constants import DEFAULT_KEY
from cardsim.state import new_state
from cardsim.state import validity as card_validity
from ecard.errors import ServiceError
from gp import commands
from gp.errors import EncodingError
from gp.keys import StaticKeys
from gp.scp import SCP03
from gp.validity import decode_date, encode_date, validity_objects
from tests.factories import World, build_world
from updates.renewal_tasks import warn_cards_nearing_expiry

pytestmark = pytest.mark.django_db


@pytest.fixture
def world() -> World:
    return build_world()


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_dates_are_yymmdd_bcd_as_in_emv() -> None:
    assert encode_date(dt.date(2030, 1, 31)) == bytes.fromhex("300131")
    assert decode_date(bytes.fromhex("300131")) == dt.date(2030, 1, 31)
    for bad in ("30013A", "301301", "300230", "3001"):
        with pytest.raises(EncodingError):
            decode_date(bytes.fromhex(bad))
    assert validity_objects(dt.date(2025, 1, 1), dt.date(2030, 1, 1)).hex().upper() == "5F25032501015F2403300101"


def test_the_policy_is_set_by_the_agency_audited_and_applies_to_new_cards(world: World) -> None:
    assert validity.policy_of(world.agency).years == 5  # the default until set
    with pytest.raises(ServiceError) as bad:
        validity.set_policy(agency=world.agency, years=0, renew_within_days=30, actor=world.users["agency_op"])
    assert bad.value.field == "years"
    with pytest.raises(ServiceError) as bank:
        validity.set_policy(agency=world.agency, years=3, renew_within_days=30, actor=world.users["alpha_op"])
    assert bank.value.code == "forbidden"

    validity.set_policy(agency=world.agency, years=3, renew_within_days=30, actor=world.users["agency_op"])

    entry = AuditEntry.objects.get(action="validity_policy.set")
    assert entry.details["years"] == 3 and entry.details["renew_within_days"] == 30
    card = card_services.issue_card(agency=world.agency, emulated=True)
    assert card.valid_until == validity.add_years(validity.today(), 3)
    assert card_validity(store.load(card.state_file)) == (card.valid_from, card.valid_until)


def test_the_policy_api(world: World) -> None:
    read = api(world.users["agency_admin"]).get("/api/v1/validity-policy/")
    assert read.status_code == 200 and read.json() == {"years": 5, "renew_within_days": 90}
    changed = api(world.users["agency_op"]).put(
        "/api/v1/validity-policy/", {"years": 10, "renew_within_days": 60}, format="json"
    )
    assert changed.status_code == 200 and changed.json() == {"years": 10, "renew_within_days": 60}
    bad = api(world.users["agency_op"]).put("/api/v1/validity-policy/", {"years": 99}, format="json")
    assert bad.status_code == 400 and bad["Content-Type"].startswith("application/problem+json")
    assert api(world.users["alpha_op"]).get("/api/v1/validity-policy/").status_code == 404
    assert api(world.users["citizen1"]).put("/api/v1/validity-policy/", {}, format="json").status_code == 404
    assert validity.policy_of(world.agency).years == 10


def test_expiry_and_the_cards_nearing_it(world: World) -> None:
    today = validity.today()
    card1, card2, card3 = (world.cards[f"card{n}"] for n in (1, 2, 3))
    Card.objects.filter(pk=card1.pk).update(valid_until=today - dt.timedelta(days=1))
    Card.objects.filter(pk=card2.pk).update(valid_until=today + dt.timedelta(days=90))
    Card.objects.filter(pk=card3.pk).update(valid_until=today + dt.timedelta(days=91))
    for card in (card1, card2, card3):
        card.refresh_from_db()
    assert validity.is_expired(card1) and not validity.is_expired(card2)
    assert not validity.is_expired(card2, today + dt.timedelta(days=90))  # the last day is valid
    assert validity.nears_expiry(card1) and validity.nears_expiry(card2) and not validity.nears_expiry(card3)
    assert set(validity.cards_nearing_expiry(world.agency)) == {card1, card2}
    Card.objects.filter(pk=card2.pk).update(standing=Card.Standing.BLOCKED)
    assert set(validity.cards_nearing_expiry(world.agency)) == {card1}


def test_holders_are_warned_once_per_card_and_expiry_date(world: World, django_capture_on_commit_callbacks) -> None:
    today = validity.today()
    for n, user in enumerate(("citizen1", "citizen2", "citizen3"), start=1):
        world.users[user].email = f"{user}@example.org"
        world.users[user].save()
        Card.objects.filter(pk=world.cards[f"card{n}"].pk).update(valid_until=today + dt.timedelta(days=10 * n))
    NotificationPreferences.objects.create(user=world.users["citizen3"], expiry=False)
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        assert warn_cards_nearing_expiry() == 2
        assert warn_cards_nearing_expiry() == 0  # the same expiry dates: not again
        Card.objects.filter(pk=world.cards["card1"].pk).update(valid_until=today - dt.timedelta(days=1))
        assert warn_cards_nearing_expiry() == 1  # a new date (here: expired), a new warning

    assert sorted(m.to[0] for m in mail.outbox) == [
        "citizen1@example.org",
        "citizen1@example.org",
        "citizen2@example.org",
    ]
    assert "expired" in mail.outbox[-1].subject
    assert CitizenEmail.objects.filter(kind=CitizenEmail.Kind.EXPIRY).count() == 3


def test_the_emulated_isd_stores_and_returns_its_validity_only_as_dates() -> None:
    state = new_state(cin=bytes.fromhex("0102030405060708"))
    card = EmulatedCard(state)
    channel = SCP03(StaticKeys.single(DEFAULT_KEY, 0x30), 0x33)
    assert card.transmit(commands.select(bytes.fromhex("A000000151000000")))[-2:] == b"\x90\x00"
    assert card.transmit(channel.external_authenticate(card.transmit(channel.initialize_update())))[-2:] == b"\x90\x00"

    def secured(apdu: bytes) -> bytes:
        return channel.unwrap(card.transmit(channel.wrap(apdu)))

    ber = commands.STORE_DATA_BER
    malformed = bytes.fromhex("5F24033013FF")
    assert secured(commands.store_data(malformed, 0, last=True, flags=ber))[-2:] == b"\x6a\x80"
    stored = validity_objects(dt.date(2026, 3, 1), dt.date(2031, 3, 1))
    assert secured(commands.store_data(stored, 0, last=True, flags=ber))[-2:] == b"\x90\x00"
    assert secured(commands.get_data(0x5F24)) == bytes.fromhex("5F24033103019000")
    assert card_validity(card.state) == (dt.date(2026, 3, 1), dt.date(2031, 3, 1))
