"""No state from unauthenticated responses (DESIGN.md §7a, issue 13 finding 1).

SCP02 and SCP03 put no R-MAC on error status words, so a relay can make up any of them. These
tests list every place where the engine reads a status word no R-MAC covers, drive a relay that
forges status words at every command of real sessions, and show that the platform's records
never claim what the card does not hold: a removal is recorded only on an R-MAC'd answer.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest

from agent.core import RelayError
from cards import services as card_services
from cards.models import CardJob, CardPackage, Enrollment, SecurityDomain
from cardsim.state import kvn_key
from issuers.custody_models import KeySet
from tests.otakit import (
    ForgingRelay,
    OtaWorld,
    PulledCard,
    assert_registry_matches_records,
    build_ota_world,
    card_registry,
    enroll,
    rolled_back,
)
from tests.shared_data import cap_file
from updates import ota

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

INS_DELETE = 0xE4
INS_INSTALL = 0xE6
INS_GET_STATUS = 0xF2
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"


class LosingRelay:
    """Sends the first command with INS ``ins`` to the card, then loses its answer (card pulled)."""

    def __init__(self, inner: Any, ins: int) -> None:
        self.inner = inner
        self.ins = ins

    def transmit(self, capdu: bytes) -> bytes:
        answer = self.inner.transmit(capdu)
        if capdu[1] == self.ins:
            raise PulledCard("the card left the reader after it answered")
        return answer


def world_with_applet() -> tuple[OtaWorld, Enrollment]:
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    release = world.releases[PACKAGE]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    return world, enroll(world)


def enrolled(world_and_enrollment: tuple[OtaWorld, Enrollment]) -> tuple[OtaWorld, Enrollment]:
    world, enrollment = world_and_enrollment
    assert world.present().ok
    return world, Enrollment.objects.get(pk=enrollment.pk)


def removal_requested() -> tuple[OtaWorld, Enrollment]:
    world, enrollment = enrolled(world_with_applet())
    card_services.request_removal(enrollment=enrollment, actor=world.citizen)
    return world, enrollment


def assert_records_true(world: OtaWorld) -> None:
    """What the platform records as on the card (active SDs, their keys, applets and packages) is
    on the card, read in an authenticated session with the ISD, and what it records as removed
    is not. (An SD in ``removing`` is work under way: it claims neither.)"""
    registry = card_registry(world)
    card_keys = world.card_transport().state["sds"]
    for sd in SecurityDomain.objects.filter(card=world.card, is_isd=False):
        if sd.state == SecurityDomain.State.REMOVED:
            assert sd.aid not in registry["apps"], f"{sd.aid} recorded removed but still on the card"
            assert not sd.applets.exists() and not sd.packages.exists()
            continue
        if sd.state != SecurityDomain.State.ACTIVE:
            continue
        assert sd.aid in registry["apps"], f"{sd.aid} recorded active but not on the card"
        if sd.key_kvn is not None:
            assert kvn_key(sd.key_kvn) in card_keys[sd.aid]["keys"], f"key set {sd.key_kvn:02X} not on the card"
        for applet in sd.applets.all():
            assert applet.instance_aid in registry["apps"], f"applet {applet.instance_aid} recorded, not on card"
        for package in sd.packages.all():
            assert package.package_aid in registry["elfs"], f"package {package.package_aid} recorded, not on card"


# ---------------------------------------------------------------------------------------------
# the list of places


def status_word_readers(module: Any) -> set[str]:
    """Functions of ``module`` that read a status word: call ``sw_of`` or read an ``.sw``."""
    tree = ast.parse(inspect.getsource(module))
    readers = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or node.name == "sw_of":
            continue
        for inner in ast.walk(node):
            calls_sw_of = isinstance(inner, ast.Call) and getattr(inner.func, "id", "") == "sw_of"
            reads_sw = isinstance(inner, ast.Attribute) and inner.attr == "sw"
            if calls_sw_of or reads_sw:
                readers.add(node.name)
    return readers


def test_the_engine_lists_every_place_it_reads_a_status_word() -> None:
    """UNAUTHENTICATED_READS names each engine method that reads a status word; a new reader must
    be added there (with what it does) before this passes. The stage plans read none."""
    from updates import plans

    listed = {read.where for read in ota.UNAUTHENTICATED_READS}
    assert status_word_readers(ota) == listed
    assert status_word_readers(plans) == set()
    for read in ota.UNAUTHENTICATED_READS:
        assert read.command and read.effect and hasattr(ota.SessionEngine, read.where)


# ---------------------------------------------------------------------------------------------
# finding 1: a faked "remove bank"


def test_a_relay_cannot_fake_a_removal_with_a_bare_6a88() -> None:
    """The reported attack, completed: the relay passes SELECT, INITIALIZE UPDATE and EXTERNAL
    AUTHENTICATE to the card and answers the registry reads, and the DELETE, with 6A88 itself.
    Nothing is recorded; the SSD, its keys and its applet stay, and so do the platform's records."""
    world, enrollment = removal_requested()
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    before = (sd.state, Enrollment.objects.get(pk=enrollment.pk).status)
    assert before == (SecurityDomain.State.REMOVING, Enrollment.Status.REMOVAL_REQUESTED)
    forging = ForgingRelay(world.card_transport(), {INS_GET_STATUS: b"\x6a\x88", INS_DELETE: b"\x6a\x88"})
    # The engine asks the card to prove the AID free; the card, whose C-MAC chain the forged
    # answers broke, refuses: the session ends with the job pending.
    with pytest.raises(RelayError, match="integrity"):
        world.present(transport=forging)
    assert INS_INSTALL in forging.seen
    job = CardJob.objects.get(card=world.card, kind=CardJob.Kind.REMOVE_BANK)
    assert job.state == CardJob.State.PENDING, job.last_error
    sd.refresh_from_db()
    assert (sd.state, Enrollment.objects.get(pk=enrollment.pk).status) == before
    assert KeySet.objects.filter(card_cin=world.card.cin, sd_aid=sd.aid, state=KeySet.State.ACTIVE).exists()
    assert sd.applets.filter(instance_aid=INSTANCE).exists()
    registry = card_registry(world)
    assert sd.aid in registry["apps"] and INSTANCE in registry["apps"]
    assert_records_true(world)
    # An honest presentation then removes the bank for real.
    assert world.present().ok
    sd.refresh_from_db()
    assert sd.state == SecurityDomain.State.REMOVED
    assert_registry_matches_records(world)


def test_a_forged_empty_listing_only_leads_to_a_real_delete() -> None:
    """The relay lets the card read its registry but replaces the answers with 6A88: the engine
    does not believe them, sends the DELETE anyway, and records the removal on the card's
    R-MAC'd 9000 to it, which is true."""
    world, enrollment = removal_requested()
    forging = ForgingRelay(world.card_transport(), {INS_GET_STATUS: b"\x6a\x88"}, forward=True)
    result = world.present(transport=forging)
    assert result.ok, result
    assert INS_DELETE in forging.seen
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert sd.state == SecurityDomain.State.REMOVED
    assert_registry_matches_records(world)


def test_a_relay_that_hides_every_answer_gets_nothing_recorded() -> None:
    """The relay lets the card run everything but replaces every registry and DELETE answer with
    6A88. The card did delete the SSD; the platform, which was never shown that with an R-MAC,
    records nothing, and the next honest presentation proves it and completes the job."""
    world, enrollment = removal_requested()
    forging = ForgingRelay(world.card_transport(), {INS_GET_STATUS: b"\x6a\x88", INS_DELETE: b"\x6a\x88"}, forward=True)
    assert not world.present(transport=forging).ok
    job = CardJob.objects.get(card=world.card, kind=CardJob.Kind.REMOVE_BANK)
    assert job.state == CardJob.State.PENDING and "6A88" in job.last_error, job.last_error
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert sd.state == SecurityDomain.State.REMOVING
    assert_records_true(world)
    assert world.present().ok
    sd.refresh_from_db()
    assert sd.state == SecurityDomain.State.REMOVED
    assert_registry_matches_records(world)


def test_a_lost_delete_answer_is_proven_by_an_authenticated_probe() -> None:
    """The card deleted the SSD but its answer was lost. On an otherwise empty card the listing is
    a bare 6A88 and a new DELETE answers 6A88 too: neither proves anything. The engine proves the
    AID free with R-MAC'd answers (INSTALL of the same AID accepted, then DELETE of it) and only
    then records the removal."""
    world, enrollment = removal_requested()
    with pytest.raises((PulledCard, RelayError)):
        world.present(transport=LosingRelay(world.card_transport(), INS_DELETE))
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert sd.state == SecurityDomain.State.REMOVING  # not yet known
    assert sd.aid not in card_registry(world)["apps"]  # but gone from the card
    spy = ForgingRelay(world.card_transport())
    result = world.present(transport=spy)
    assert result.ok, result
    assert spy.seen.count(INS_INSTALL) == 1 and spy.seen.count(INS_DELETE) == 2  # DELETE, probe, DELETE
    sd.refresh_from_db()
    assert sd.state == SecurityDomain.State.REMOVED
    assert_registry_matches_records(world)


def test_with_another_bank_on_the_card_the_listing_itself_proves_absence() -> None:
    """When the card holds other applications its listing carries an R-MAC, and proves the SSD
    gone without a probe."""
    world, enrollment = world_with_applet()
    enroll(world, world.other_bank)
    assert world.present().ok
    card_services.request_removal(enrollment=Enrollment.objects.get(pk=enrollment.pk), actor=world.citizen)
    with pytest.raises((PulledCard, RelayError)):
        world.present(transport=LosingRelay(world.card_transport(), INS_DELETE))
    spy = ForgingRelay(world.card_transport())
    assert world.present(transport=spy).ok
    assert INS_INSTALL not in spy.seen and INS_DELETE not in spy.seen
    assert SecurityDomain.objects.get(pk=enrollment.security_domain_id).state == SecurityDomain.State.REMOVED
    assert_registry_matches_records(world)


def test_a_relay_cannot_fake_that_a_package_was_removed() -> None:
    """The same attack on a bank's own package removal (in the SSD's channel, with DM)."""
    world, enrollment = enrolled(world_with_applet())
    sd = enrollment.security_domain
    CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.bank,
        security_domain=sd,
        params={"remove": [PACKAGE]},
    )
    forging = ForgingRelay(world.card_transport(), {INS_GET_STATUS: b"\x6a\x88", INS_DELETE: b"\x6a\x88"})
    assert not world.present(transport=forging).ok
    job = CardJob.objects.get(card=world.card, kind=CardJob.Kind.UPDATE_APPLET)
    assert job.state == CardJob.State.PENDING
    assert CardPackage.objects.filter(security_domain=sd, package_aid=PACKAGE).exists()
    assert PACKAGE in card_registry(world)["elfs"]
    assert_records_true(world)
    assert world.present().ok
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE
    assert not CardPackage.objects.filter(security_domain=sd, package_aid=PACKAGE).exists()
    assert PACKAGE not in card_registry(world)["elfs"]


# ---------------------------------------------------------------------------------------------
# every command of real sessions, every forged status word

FORGED = (b"\x6a\x88", b"\x6a\x82", b"\x63\x00", b"\x69\x85", b"\x90\x00")


def apdu_count(setup: Any) -> int:
    with rolled_back():
        world, _ = setup()
        spy = ForgingRelay(world.card_transport())
        assert world.present(transport=spy).ok
        return spy.count


@pytest.mark.parametrize("setup", [world_with_applet, removal_requested], ids=["enrollment-with-applet", "removal"])
def test_forged_status_words_anywhere_never_make_the_records_false(setup: Any) -> None:
    """For every command of an enrollment (SSD, keys, LOAD, INSTALL with DM receipts) and of a
    removal: the relay answers it with each forged status word instead of the card. Whatever the
    engine then does, every record it holds is true of the card, and no job is done unless the
    card shows its effect."""
    outcomes: dict[str, int] = {}
    for target in range(apdu_count(setup)):
        for answer in FORGED:
            with rolled_back():
                world, _enrollment = setup()
                forging = ForgingRelay(world.card_transport(), at=target, answer=answer)
                try:
                    result = world.present(transport=forging)
                    outcome = "done" if result.ok else "pending"
                except RelayError:
                    outcome = "rejected"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                assert_records_true(world)
                job = CardJob.objects.filter(card=world.card).order_by("-id").first()
                if job.state == CardJob.State.DONE:
                    assert_registry_matches_records(world)
                else:
                    assert job.state == CardJob.State.PENDING, (target, answer.hex(), job.state, job.last_error)
    # The sweep exercised refusals; forged answers never completed work the card had not done.
    assert outcomes.get("rejected", 0) + outcomes.get("pending", 0) > 0, outcomes
