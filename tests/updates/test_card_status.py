"""The card's life cycle over the air (issue 19): a blocked card presented anywhere is locked by
its ISD (SET STATUS CARD_LOCKED, proven by an R-MAC'd GET STATUS P1 80) and refused; a replaced
card is terminated at its next presentation and refused after; a relay that forges the answer
changes no record."""

from __future__ import annotations

from typing import Any

import pytest

from agent.core import RelayError
from audit.models import AuditEntry
from cards import lifecycle
from cards import services as card_services
from cards.models import Card, CardJob, SecurityDomain
from cardsim.transport import InProcessCard
from ecard.errors import ServiceError
from gp.commands import CardLifeCycle
from issuers import services as issuer_services
from issuers.models import Membership
from tests.factories import make_user
from tests.otakit import ApiServer, ForgingRelay, OtaWorld, build_ota_world, enroll
from updates import services as update_services

pytestmark = pytest.mark.django_db

SET_STATUS = 0xF0


def agency_operator(world: OtaWorld):
    user = make_user("agency_op")
    issuer_services.add_member(organization=world.agency, user=user, role=Membership.Role.OPERATOR)
    return user


def someone_elses_reader(world: OtaWorld) -> ApiServer:
    """A device credential of another citizen (who holds a card of their own): a finder, or a thief."""
    stranger = make_user("stranger")
    card_services.issue_card(agency=world.agency, holder=stranger, emulated=True)
    _credential, token = update_services.issue_agent_credential(user=stranger, name="stranger's phone")
    return ApiServer(token)


def card_lifecycle_on_card(world: OtaWorld, card: Card | None = None) -> int:
    return int(InProcessCard((card or world.card).state_file).card.state["lifecycle"])


def refusal(world: OtaWorld, **present: Any) -> str:
    """The reason the server gives for ending the card's session refused (what the agent prints)."""
    with pytest.raises(RelayError) as refused:
        world.present(**present)
    return str(refused.value)


def status_jobs(card: Card) -> list[CardJob]:
    return list(CardJob.objects.filter(card=card, kind=CardJob.Kind.CARD_STATUS).order_by("pk"))


def test_a_blocked_card_presented_by_a_stranger_is_locked_from_the_card_then_refused() -> None:
    world = build_ota_world()
    enrollment = enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    rotation = card_services.request_key_rotation(security_domain=sd, actor=world.operator)  # held while blocked

    lifecycle.block_card(card=world.card, actor=world.citizen, reason="stolen")
    with pytest.raises(ServiceError) as refused:
        card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    assert refused.value.code == "state"

    assert "this card is blocked" in refusal(world, server=someone_elses_reader(world))
    world.card.refresh_from_db()
    assert world.card.lifecycle == Card.Lifecycle.CARD_LOCKED
    assert card_lifecycle_on_card(world) == CardLifeCycle.CARD_LOCKED  # the card itself is locked
    [lock] = status_jobs(world.card)
    assert lock.state == CardJob.State.DONE and lock.params == {"target": "CARD_LOCKED"}
    rotation.refresh_from_db()
    assert rotation.state == CardJob.State.PENDING and rotation.attempts == 0  # never run on a blocked card
    assert AuditEntry.objects.filter(action="card.locked", card_cin=world.card.cin).count() == 1

    # Proven locked, with nothing left to run: refused at identification, by the holder too.
    attempts_before = AuditEntry.objects.filter(action="job.attempt").count()
    assert "this card is blocked" in refusal(world)
    assert AuditEntry.objects.filter(action="job.attempt").count() == attempts_before


def test_unblocking_a_locked_card_sets_it_secured_again_before_its_held_work() -> None:
    world = build_ota_world()
    enrollment = enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    rotation = card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    lifecycle.block_card(card=world.card, actor=world.citizen, reason="lost")
    assert "blocked" in refusal(world)
    lifecycle.unblock_card(card=world.card, actor=agency_operator(world), reason="found in the citizen's coat")

    result = world.present()

    assert result.ok, result
    world.card.refresh_from_db()
    assert world.card.lifecycle == Card.Lifecycle.SECURED
    assert card_lifecycle_on_card(world) == CardLifeCycle.SECURED
    rotation.refresh_from_db()
    assert rotation.state == CardJob.State.DONE  # the held work ran after the unlock
    assert AuditEntry.objects.filter(action="card.unlocked", card_cin=world.card.cin).exists()


def test_a_relay_forging_9000_to_set_status_changes_no_record() -> None:
    world = build_ota_world()
    lifecycle.block_card(card=world.card, actor=world.citizen, reason="lost")

    # The relay keeps SET STATUS from the card and answers 9000 itself (no R-MAC).
    relay = ForgingRelay(world.card_transport(), {SET_STATUS: b"\x90\x00"})
    assert "integrity" in refusal(world, transport=relay)  # a bare 9000 where an R-MAC is due

    assert relay.forged == 1
    world.card.refresh_from_db()
    assert world.card.lifecycle == Card.Lifecycle.SECURED
    assert card_lifecycle_on_card(world) == CardLifeCycle.SECURED
    [lock] = status_jobs(world.card)
    assert lock.state == CardJob.State.PENDING
    assert not AuditEntry.objects.filter(action="card.locked").exists()

    # The card ran it, the relay forged the answer: still nothing recorded from the forgery ...
    forwarding = ForgingRelay(world.card_transport(), {SET_STATUS: b"\x90\x00"}, forward=True)
    refusal(world, transport=forwarding)
    world.card.refresh_from_db()
    assert world.card.lifecycle == Card.Lifecycle.SECURED
    assert card_lifecycle_on_card(world) == CardLifeCycle.CARD_LOCKED
    # ... until the card's own R-MAC'd listing shows it locked.
    assert "blocked" in refusal(world)
    world.card.refresh_from_db()
    assert world.card.lifecycle == Card.Lifecycle.CARD_LOCKED


def test_a_replaced_card_is_terminated_at_its_next_presentation_and_refused_after() -> None:
    world = build_ota_world()
    new = lifecycle.replace_card(old_card=world.card, actor=agency_operator(world), reason="lost")

    assert "this card is terminated" in refusal(world)
    world.card.refresh_from_db()
    assert world.card.lifecycle == Card.Lifecycle.TERMINATED
    assert card_lifecycle_on_card(world) == CardLifeCycle.TERMINATED
    assert AuditEntry.objects.filter(action="card.terminated", card_cin=world.card.cin).count() == 1
    assert "this card is terminated" in refusal(world)
    assert [j.state for j in status_jobs(world.card)] == [CardJob.State.DONE]
    # The new card is the holder's live card, unaffected.
    assert Card.objects.get(holder=world.citizen, standing=Card.Standing.ACTIVE) == new
