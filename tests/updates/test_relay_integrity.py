"""A relay it cannot trust: flipped bytes in any C-APDU or R-APDU, replayed, reordered, truncated
or duplicated batches. Each ends the session without the job done; what the card did before is
consistent, and an honest presentation afterwards completes the work."""

from __future__ import annotations

from typing import Any

import pytest

from agent.core import RelayError, run_batch
from audit.models import AuditEntry
from cards.models import CardJob
from tests.otakit import (
    ApiServer,
    ForgingRelay,
    OtaWorld,
    assert_consistent_in_progress,
    assert_registry_matches_records,
    build_ota_world,
    enroll,
    rolled_back,
)
from tests.shared_data import cap_file
from updates.models import AuthRefusal, CardSession

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def enrolled_world() -> OtaWorld:
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": "0102030405060708"}]
    world.bank.ssd_template.save()
    enroll(world)
    return world


class TamperingCard:
    """Sits between agent and card: flips one bit of the n-th C-APDU or of its R-APDU."""

    def __init__(self, inner: Any, target: int, *, response: bool) -> None:
        self.inner = inner
        self.target = target
        self.response = response
        self.count = 0
        self.secured: list[bool] = []
        self.maced_response: list[bool] = []

    def transmit(self, capdu: bytes) -> bytes:
        index = self.count
        self.count += 1
        self.secured.append(bool(capdu[0] & 0x04))
        if index == self.target and not self.response:
            capdu = flip(capdu, 5 if len(capdu) > 5 else 2)  # first data byte, else P1
        rapdu = self.inner.transmit(capdu)
        # An R-MAC (SCP03 SL 33) is on secured responses that carry data (GP Amd D §6.2.5).
        self.maced_response.append(bool(capdu[0] & 0x04) and len(rapdu) > 2)
        if index == self.target and self.response:
            rapdu = flip(rapdu, 0)  # first data byte, or SW1 when there is no data
        return rapdu


def flip(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x01
    return bytes(out)


def honest_apdus(response: bool) -> tuple[int, list[bool]]:
    """How many APDUs an honest enrollment sends, and which of them (or of their responses) are
    integrity-protected."""
    with rolled_back():
        world = enrolled_world()
        probe = TamperingCard(world.card_transport(), -1, response=False)
        result = world.present(transport=probe)
        assert result.ok
        return probe.count, probe.maced_response if response else probe.secured


@pytest.mark.parametrize("response", [False, True], ids=["c-apdu", "r-apdu"])
def test_any_flipped_apdu_never_completes_work_wrongly(response: bool) -> None:
    """For every APDU of an enrollment: flip one bit of it (or of its response). The session is
    rejected (always, for secured APDUs and MAC-protected responses), the job is not done, the
    card registry stays consistent with the records, and an honest presentation then completes."""
    count, secured = honest_apdus(response)
    outcomes = {"rejected": 0, "harmless": 0}
    for target in range(count):
        with rolled_back():
            world = enrolled_world()
            tampering = TamperingCard(world.card_transport(), target, response=response)
            rejected = False
            try:
                result = world.present(transport=tampering)
            except RelayError:
                rejected = True
            job = CardJob.objects.get(card=world.card)
            if rejected or not result.ok:
                outcomes["rejected"] += 1
                assert job.state == CardJob.State.PENDING, (target, job.state, job.last_error)
                assert_consistent_in_progress(world)
                if secured[target]:
                    assert rejected, f"tampered protected APDU {target} must reject the session"
                    assert CardSession.objects.filter(card=world.card, state="rejected").exists()
            else:
                # The flipped bit was in a field nothing depends on (e.g. the FCI the agent
                # ignores): the work is done exactly as an honest run does it.
                outcomes["harmless"] += 1
                assert not secured[target], target
                assert job.state == CardJob.State.DONE
                assert_registry_matches_records(world)
            final = world.present()
            if AuthRefusal.objects.filter(credential__user=world.citizen).exists():
                # The card refused our (altered) EXTERNAL AUTHENTICATE: that reader is held for
                # the SD, the work waits for another reader (one relay cannot stop a bank).
                job = CardJob.objects.get(card=world.card)
                assert not final.ok and not final.error, (target, final)
                assert job.state == CardJob.State.PENDING and "another reader" in job.last_error, target
                final = world.present(server=world.another_reader())
                assert final.ok, (target, final)
            assert CardJob.objects.get(card=world.card).state == CardJob.State.DONE
            assert_registry_matches_records(world)
    assert outcomes["rejected"] >= sum(secured), outcomes


def first_batches(world: OtaWorld) -> tuple[ApiServer, dict[str, Any], Any]:
    server = ApiServer(world.token)
    transport = world.card_transport()
    opened = server.open_session("batch")
    return server, opened, transport


def test_replayed_batch_closes_the_session() -> None:
    world = enrolled_world()
    server, opened, transport = first_batches(world)
    identify = run_batch(transport, opened["commands"])
    second = server.exchange(opened["session"], opened["exchange"], identify)
    with pytest.raises(RelayError, match="out of order"):
        server.exchange(opened["session"], opened["exchange"], identify)  # the same batch again
    session = CardSession.objects.get(pk=opened["session"])
    assert session.state == CardSession.State.REJECTED
    assert CardJob.objects.get(card=world.card).state == CardJob.State.PENDING
    with pytest.raises(RelayError):
        server.exchange(opened["session"], second["exchange"], run_batch(transport, second["commands"]))
    assert AuditEntry.objects.filter(action="session.rejected", card_cin=world.card.cin).exists()
    assert world.present().ok


def test_reordered_exchange_closes_the_session() -> None:
    world = enrolled_world()
    server, opened, transport = first_batches(world)
    identify = run_batch(transport, opened["commands"])
    with pytest.raises(RelayError, match="out of order"):
        server.exchange(opened["session"], opened["exchange"] + 1, identify)
    assert CardSession.objects.get(pk=opened["session"]).state == CardSession.State.REJECTED


def test_truncated_and_reordered_responses_close_the_session() -> None:
    world = enrolled_world()
    server, opened, transport = first_batches(world)
    identify = run_batch(transport, opened["commands"])
    with pytest.raises(RelayError, match="truncated"):
        server.exchange(opened["session"], opened["exchange"], identify[:2])
    assert CardSession.objects.get(pk=opened["session"]).state == CardSession.State.REJECTED

    server, opened, transport = first_batches(world)
    identify = run_batch(transport, opened["commands"])
    swapped = [identify[0], identify[2], identify[1]]
    with pytest.raises(RelayError):
        server.exchange(opened["session"], opened["exchange"], swapped)
    assert CardSession.objects.get(pk=opened["session"]).state == CardSession.State.REJECTED
    assert CardJob.objects.get(card=world.card).state == CardJob.State.PENDING
    assert world.present().ok


def test_another_devices_credential_cannot_drive_a_session() -> None:
    world = enrolled_world()
    from tests.factories import make_user
    from updates import services

    other = make_user("citizen9")
    from cards import services as card_services

    card_services.issue_card(agency=world.agency, holder=other, emulated=True)
    _credential, token = services.issue_agent_credential(user=other, name="other phone")
    _server, opened, transport = first_batches(world)
    intruder = ApiServer(token)
    with pytest.raises(RelayError, match="404"):
        intruder.exchange(opened["session"], opened["exchange"], run_batch(transport, opened["commands"]))
    # and presenting someone else's card with your own credential is refused
    with pytest.raises(RelayError, match="not registered"):
        world.present(server=ApiServer(token))


def test_refused_authentications_stop_before_the_card_blocks_the_key_set() -> None:
    """Each EXTERNAL AUTHENTICATE the card refuses costs one of its tries. A refusal after the card
    cryptogram verified is the relay's or the card's fault, so each reader counts once; refusals
    through two readers (a card refusing everywhere) stop the platform before the card's third."""
    world = enrolled_world()
    ea_index = 5  # SELECT ISD, GET DATA x2, SELECT, INITIALIZE UPDATE, then EXTERNAL AUTHENTICATE
    readers = [ApiServer(world.token), world.another_reader("tablet")]
    for attempt, reader in enumerate(readers, start=1):
        tampering = TamperingCard(world.card_transport(), ea_index, response=False)
        with pytest.raises(RelayError, match="refused the host cryptogram"):
            world.present(transport=tampering, server=reader)
        isd = world.card.security_domains.get(is_isd=True)
        assert isd.auth_failures == attempt
    result = world.present(server=world.another_reader("kiosk"))
    job = CardJob.objects.get(card=world.card)
    assert job.state == CardJob.State.FAILED and "before the card blocks" in job.last_error, result
    assert AuditEntry.objects.filter(action="secure_channel.stopped", card_cin=world.card.cin).exists()
    assert AuditEntry.objects.filter(action="secure_channel.auth_failed", card_cin=world.card.cin).count() == 2
    # The card itself is not blocked: two failures, below its limit of three.
    assert card_auth_failures(world, world.card.isd_aid) == 2

    # An administrator of the SD's owner clears the count after investigating; work resumes.
    from rest_framework.test import APIClient

    from issuers.models import Membership
    from issuers.services import add_member
    from tests.factories import make_user

    admin = make_user("agency_admin")
    add_member(organization=world.agency, user=admin, role=Membership.Role.ADMIN)
    client = APIClient()
    client.force_authenticate(admin)
    isd = world.card.security_domains.get(is_isd=True)
    cleared = client.post(f"/api/v1/security-domains/{isd.pk}/reset-auth-failures/")
    assert cleared.status_code == 200 and cleared.json()["auth_failures"] == 0
    assert AuditEntry.objects.filter(action="secure_channel.failures_cleared", card_cin=world.card.cin).exists()
    assert not AuthRefusal.objects.filter(security_domain=isd).exists()  # held readers released too
    operator = APIClient()
    operator.force_authenticate(world.operator)  # a bank operator cannot clear the agency's ISD
    assert operator.post(f"/api/v1/security-domains/{isd.pk}/reset-auth-failures/").status_code in (403, 404)


def card_auth_failures(world: OtaWorld, sd_aid: str) -> int:
    """Failed authentications the emulated card itself counted for the SD's key sets."""
    keys = world.card_transport().state["sds"][sd_aid]["keys"]
    return max(record.get("failures", 0) for record in keys.values())


INS_EXTERNAL_AUTHENTICATE = 0x82


def test_a_relay_that_fakes_refused_authentications_cannot_stop_the_bank() -> None:
    """Finding 2: a relay answers EXTERNAL AUTHENTICATE with 6300 without sending it to the card.
    However often it does, the count moves once (its reader is held), the security domain is not
    stopped, the card counted nothing, and another reader completes the work."""
    world = enrolled_world()
    forging = ForgingRelay(world.card_transport(), {INS_EXTERNAL_AUTHENTICATE: b"\x63\x00"})
    with pytest.raises(RelayError, match="refused the host cryptogram"):
        world.present(transport=forging)
    isd = world.card.security_domains.get(is_isd=True)
    assert isd.auth_failures == 1 and forging.forged == 1
    assert card_auth_failures(world, world.card.isd_aid) == 0  # the card never saw that command
    # The same reader now gets nothing past the hold, however often it comes back.
    for _ in range(3):
        forging.inner = world.card_transport()
        held = world.present(transport=forging)
        assert not held.ok and not held.error and held.pending == 1
    assert forging.forged == 1
    job = CardJob.objects.get(card=world.card)
    assert job.state == CardJob.State.PENDING and "another reader" in job.last_error
    assert isd.auth_failures == 1 and not AuditEntry.objects.filter(action="secure_channel.stopped").exists()
    assert AuditEntry.objects.filter(action="secure_channel.reader_held", card_cin=world.card.cin).exists()
    # An honest reader finishes the enrollment; the card's authenticated answer clears the count.
    assert world.present(server=world.another_reader()).ok
    job.refresh_from_db()
    isd.refresh_from_db()
    assert job.state == CardJob.State.DONE
    assert isd.auth_failures == 0 and not AuthRefusal.objects.filter(security_domain=isd).exists()
    assert_registry_matches_records(world)


def test_a_forged_success_to_external_authenticate_clears_nothing() -> None:
    """A bare 9000 to EXTERNAL AUTHENTICATE is not the card's word: the failure count is cleared
    only by an R-MAC'd answer, so a relay cannot reset it and let the card's tries run out."""
    world = enrolled_world()
    tampering = TamperingCard(world.card_transport(), 5, response=False)
    with pytest.raises(RelayError, match="refused the host cryptogram"):
        world.present(transport=tampering)
    reader = world.another_reader()
    forging = ForgingRelay(world.card_transport(), {INS_EXTERNAL_AUTHENTICATE: b"\x90\x00"})
    with pytest.raises(RelayError):
        world.present(transport=forging, server=reader)
    isd = world.card.security_domains.get(is_isd=True)
    assert isd.auth_failures == 1 and AuthRefusal.objects.filter(security_domain=isd).exists()
