"""Renewal campaigns (issue 19): the agency renews its cards nearing expiry in waves, with the
rollouts' groups, thresholds and progress; which cards a campaign targets; the API.

The 1,000-card campaign uses cheap cards: records written in bulk, each card's state in memory
(``cardsim.card.Card``, ISD keys diversified from the agency master as at personalisation, the
validity in its ISD), presented in-process through the relay services (no HTTP)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agent.core import run_session
from audit.models import AuditEntry
from cards import validity
from cards.emulation import agency_master
from cards.models import ISD_AID, Card, SecurityDomain
from cards.services import PRIVILEGES_ISD
from cardsim.card import Card as EmulatedCard
from cardsim.state import key_versions, new_state
from cardsim.state import validity as card_validity
from ecard.errors import ServiceError
from gp.validity import encode_date
from issuers import custody
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from tests.factories import make_user
from tests.otakit import PullableCard, PulledCard
from updates import renewal, rollouts
from updates import services as update_services
from updates.models import AgentCredential
from updates.renewal_campaign import create_renewal_rollout
from updates.rollout_models import Rollout, RolloutGroup, RolloutTarget

pytestmark = pytest.mark.django_db

ISD_KVN = 0x30


class InProcessRelay:
    """The relay services called directly (the agent's ``Server`` protocol, no HTTP)."""

    def __init__(self, credential: AgentCredential) -> None:
        self.credential = credential

    def open_session(self, mode: str) -> dict[str, Any]:
        return update_services.open_session(credential=self.credential, mode=mode).as_json()

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        return update_services.exchange(
            session_id=session, credential=self.credential, number=number, responses=responses
        ).as_json()


class MemoryCard:
    """An emulated card whose state lives in memory only; pulled and inserted again = power cycle."""

    def __init__(self, state: Any) -> None:
        self.card = EmulatedCard(state)
        self.atr = self.card.power_on()

    def transmit(self, capdu: bytes) -> bytes:
        return self.card.transmit(bytes(capdu))

    def reset(self) -> bytes:
        self.atr = self.card.reset()
        return self.atr


@dataclass
class Holder:
    card: Card
    chip: MemoryCard
    credential: AgentCredential

    def present(self, transport: Any = None) -> Any:
        self.chip.reset()
        return run_session(transport or self.chip, InProcessRelay(self.credential), mode="batch")


@dataclass
class Agency:
    organization: Organization
    operator: Any


def make_agency() -> Agency:
    agency = issuer_services.create_organization(name="National Card Agency", slug="agency", kind="agency")
    operator = make_user("agency_op")
    issuer_services.add_member(organization=agency, user=operator, role=Membership.Role.OPERATOR)
    return Agency(agency, operator)


def cheap_cards(agency: Organization, count: int, *, valid_until: dt.date, prefix: str = "R") -> list[Holder]:
    """``count`` citizens with SCP03 cards in bulk: records, the ISD's record, a device credential
    each, and the card's state in memory (ISD keys diversified from the agency master)."""
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"{prefix.lower()}{n:05d}") for n in range(count)]
    )
    users = list(get_user_model().objects.filter(username__in=[u.username for u in users]).order_by("username"))
    valid_from = validity.add_years(valid_until, -5)
    Card.objects.bulk_create(
        [
            Card(
                cin=f"{prefix.encode().hex().upper()}{n:014X}",
                serial=f"S{prefix}{n:08d}",
                kdd=secrets.token_hex(10).upper(),
                holder=user,
                issued_by=agency,
                emulated=True,
                valid_from=valid_from,
                valid_until=valid_until,
            )
            for n, user in enumerate(users)
        ]
    )
    cards = list(Card.objects.filter(holder__in=users).order_by("cin"))
    SecurityDomain.objects.bulk_create(
        [
            SecurityDomain(
                card=card,
                organization=agency,
                aid=ISD_AID,
                is_isd=True,
                privileges=PRIVILEGES_ISD,
                management="am",
                scp=0x03,
                scp_i=0x70,
                key_kvn=ISD_KVN,
                lifecycle=SecurityDomain.Lifecycle.PERSONALIZED,
                state=SecurityDomain.State.ACTIVE,
            )
            for card in cards
        ]
    )
    AgentCredential.objects.bulk_create(
        [
            AgentCredential(user=card.holder, name="reader", key_id=secrets.token_hex(8), secret_hash="unused")
            for card in cards
        ]
    )
    credentials = {c.user_id: c for c in AgentCredential.objects.filter(user__in=users).select_related("user")}
    master = custody.load_secret_key(agency_master(agency, "kdf3"))
    holders = []
    for card in cards:
        state = new_state(
            scp=0x03,
            key=master,
            kvn=ISD_KVN,
            cin=bytes.fromhex(card.cin),
            kdd=bytes.fromhex(card.kdd),
            diversify_scheme="kdf3",
            valid_from=valid_from,
            valid_until=valid_until,
        )
        holders.append(Holder(card, MemoryCard(state), credentials[card.holder_id]))
    return holders


def renewed(holder: Holder, valid_until: dt.date) -> bool:
    """The card's own state proves the renewal: the new expiry in its ISD's 5F24 and the new ISD
    key version instead of the old."""
    state = holder.chip.card.state
    expiry = state["apps"][ISD_AID]["data"].get("5F24")
    versions = key_versions(state, ISD_AID)
    return expiry == encode_date(valid_until).hex().upper() and ISD_KVN + 1 in versions and ISD_KVN not in versions


@pytest.mark.slow
def test_a_renewal_campaign_over_a_thousand_cards() -> None:
    world = make_agency()
    today = validity.today()
    holders = cheap_cards(world.organization, 1000, valid_until=today + dt.timedelta(days=20))
    # not targeted: a card valid for years, and a blocked one
    far = cheap_cards(world.organization, 1, valid_until=today + dt.timedelta(days=900), prefix="F")
    blocked = cheap_cards(world.organization, 1, valid_until=today + dt.timedelta(days=10), prefix="B")
    Card.objects.filter(pk=blocked[0].card.pk).update(standing=Card.Standing.BLOCKED)

    rollout = create_renewal_rollout(agency=world.organization, actor=world.operator, groups=["10%", "100%"])
    assert rollout.target_kind == Rollout.Target.RENEW and rollout.bank == world.organization
    assert rollout.total == 1000
    rollouts.start_rollout(rollout=rollout, actor=world.operator)
    first, second = RolloutGroup.objects.filter(rollout=rollout).order_by("index")
    assert (first.state, first.total, second.state) == ("running", 100, "waiting")
    expected_until = validity.add_years(today, 5)

    by_card = {h.card.pk: h for h in holders}
    first_wave = [by_card[c] for c in RolloutTarget.objects.filter(group=first).values_list("card_id", flat=True)]
    # three cards of the first wave are pulled mid-renewal: after PUT KEY ran with its answer
    # lost (APDU 6: the ISD holds only the new keys), and before and after STORE DATA
    for holder, limit, lose in zip(first_wave[:3], (6, 7, 7), (True, False, True), strict=True):
        with pytest.raises(PulledCard):
            holder.present(PullableCard(holder.chip, limit, lose_response=lose))
    # the card may hold the new keys (and even the new validity), but nothing unproven is recorded
    pulled = Card.objects.filter(pk__in=[h.card.pk for h in first_wave[:3]])
    assert set(pulled.values_list("isd_kvn", "valid_until")) == {(ISD_KVN, today + dt.timedelta(days=20))}
    assert renewed(first_wave[2], expected_until)  # pulled after STORE DATA ran: the card is renewed
    for holder in first_wave:
        assert holder.present().ok
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.succeeded == 100 and second.state == "running"  # the success threshold started wave 2

    for holder in holders:
        if not renewed(holder, expected_until):
            assert holder.present().ok
    for outsider in far + blocked:
        outsider.present()

    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.COMPLETED
    assert all(renewed(h, expected_until) for h in holders)
    assert not renewed(far[0], expected_until) and not renewed(blocked[0], expected_until)
    assert card_validity(far[0].chip.card.state)[1] == today + dt.timedelta(days=900)
    cards = Card.objects.filter(pk__in=by_card)
    assert set(cards.values_list("key_scheme", "isd_kvn", "valid_until")) == {("stored", ISD_KVN + 1, expected_until)}
    # every action in the transparency log: one renewal and one key rotation per card, its result
    assert AuditEntry.objects.filter(action="card.renewed").count() == 1000
    assert AuditEntry.objects.filter(action="card.isd_keys_rotated").count() == 1000
    assert AuditEntry.objects.filter(action="rollout.card_result", outcome="success").count() == 1000
    assert AuditEntry.objects.filter(action="rollout.completed", subject_id=str(rollout.pk)).exists()


def test_a_campaign_targets_only_cards_nearing_expiry_in_use_without_a_renewal_pending() -> None:
    world = make_agency()
    today = validity.today()
    due = cheap_cards(world.organization, 3, valid_until=today + dt.timedelta(days=60), prefix="D")
    expired = cheap_cards(world.organization, 1, valid_until=today - dt.timedelta(days=3), prefix="E")
    later = cheap_cards(world.organization, 1, valid_until=today + dt.timedelta(days=200), prefix="L")
    Card.objects.filter(pk=due[2].card.pk).update(standing=Card.Standing.BLOCKED)
    renewal.request_renewal(card=due[1].card, actor=due[1].card.holder)  # already pending

    rollout = create_renewal_rollout(agency=world.organization, actor=world.operator, groups=["100%"])

    targeted = set(RolloutTarget.objects.filter(rollout=rollout).values_list("card_id", flat=True))
    assert targeted == {due[0].card.pk, expired[0].card.pk}
    with pytest.raises(ServiceError, match="still ready"):  # one open campaign at a time
        create_renewal_rollout(agency=world.organization, actor=world.operator, groups=["100%"])
    rollouts.cancel_rollout(rollout=rollout, actor=world.operator)
    # a listed card is renewed whatever its expiry; one that is not in use is named
    listed = create_renewal_rollout(
        agency=world.organization, actor=world.operator, groups=["100%"], cins=[later[0].card.cin]
    )
    assert listed.total == 1
    rollouts.cancel_rollout(rollout=listed, actor=world.operator)
    with pytest.raises(ServiceError, match=due[2].card.cin):
        create_renewal_rollout(agency=world.organization, actor=world.operator, groups=["100%"], cins=[due[2].card.cin])


def test_only_the_agency_runs_renewal_campaigns() -> None:
    world = make_agency()
    bank = issuer_services.admit_bank(name="Alpha Bank", slug="alpha", rid="F0414C5048")
    bank_op = make_user("bank_op")
    issuer_services.add_member(organization=bank, user=bank_op, role=Membership.Role.OPERATOR)
    cheap_cards(world.organization, 1, valid_until=validity.today())
    with pytest.raises(ServiceError, match="only the agency"):
        create_renewal_rollout(agency=bank, actor=bank_op, groups=["100%"])
    with pytest.raises(ServiceError, match="operators"):
        create_renewal_rollout(agency=world.organization, actor=bank_op, groups=["100%"])


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_renewals_api_plans_a_campaign_and_the_rollout_api_runs_it() -> None:
    world = make_agency()
    holders = cheap_cards(world.organization, 4, valid_until=validity.today() + dt.timedelta(days=5))
    client = api(world.operator)

    bad = client.post("/api/v1/renewals/", {"groups": ["50%"]}, format="json")
    assert bad.status_code == 400 and bad["Content-Type"].startswith("application/problem+json")
    created = client.post("/api/v1/renewals/", {"groups": ["50%", "100%"], "name": "spring"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["target_kind"] == "renew" and body["total"] == 4 and body["name"] == "spring"
    started = client.post(f"/api/v1/rollouts/{body['id']}/start/")
    assert started.status_code == 200 and started.json()["state"] == "running"
    assert started.json()["progress"]["overall"]["running"] == 2
    citizen = holders[0].card.holder
    refused = api(citizen).post("/api/v1/renewals/", {"groups": ["100%"]}, format="json")
    assert refused.status_code == 403
