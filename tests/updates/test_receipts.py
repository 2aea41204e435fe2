"""Delegated Management receipts the engine must refuse (GP 2.3.1 Annex C.4; DESIGN §7a).

The card's answer to a LOAD, INSTALL or DELETE carrying a DM token holds a confirmation: a
receipt (MAC under the card's receipt key) over a confirmation counter, the card unique data and
the operation's AIDs. Here the card itself misbehaves -- the confirmation is altered before the
card's secure channel wraps the answer, so the R-MAC is genuine and only the receipt lies:

* forged: a bit of the receipt flipped (it no longer verifies under the receipt key);
* replayed: a genuine receipt the card gave for an earlier operation (its counter does not grow);
* missing: no receipt at all (``00``), as a card outside Delegated Management answers.

Each ends the session without the job done, leaves the platform's records as they were, and
records why (the job's last error, the session's closed reason and the ``session.rejected``
audit entry). An honest presentation afterwards completes the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.core import RelayError
from audit.models import AuditEntry
from cards.models import AppletInstance, Card, CardJob, CardPackage, Enrollment, SecurityDomain
from gp import dm
from tests.otakit import (
    OtaWorld,
    assert_registry_matches_records,
    build_ota_world,
    enroll,
    platform_view,
    update_applet_job,
)
from tests.shared_data import cap_file
from updates.models import CardSession

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

PACKAGE = "0102030405"
INSTANCE = "0102030405060708"
INS_FOR_OPERATION = {"load": 0xE8, "install": 0xE6, "delete": 0xE4}

REFUSAL_FOR_FAULT = {
    "forged": "receipt does not verify",
    "replayed": "confirmation counter did not advance (replayed receipt)",
    "missing": "the card gave no receipt for a delegated operation",
}


class ReceiptFaults:
    """Alters the confirmations the emulated card builds (``gp.dm.build_confirmation``, card side
    only) for one kind of operation; the relay wrapper tells it which command the card is running.
    Every genuine confirmation is kept, so a later one can be replaced by an earlier copy."""

    def __init__(self, original: Callable[..., bytes]) -> None:
        self.original = original
        self.current_ins: int | None = None
        self.target_ins: int | None = None
        self.fault = ""
        self.genuine: list[bytes] = []
        self.applied = 0
        self.replay_index = -1  # which genuine confirmation a replay copies (default: the latest)

    def build_confirmation(self, *args: Any, **kwargs: Any) -> bytes:
        confirmation = self.original(*args, **kwargs)
        if confirmation == b"\x00":
            return confirmation
        if self.current_ins != self.target_ins or not self.fault:
            self.genuine.append(confirmation)
            return confirmation
        self.applied += 1
        if self.fault == "missing":
            return b"\x00"
        if self.fault == "replayed":
            assert self.genuine, "a replay needs a receipt the card gave earlier"
            return self.genuine[self.replay_index]
        parsed = dm.parse_confirmation(confirmation)
        forged = bytearray(parsed.receipt)
        forged[0] ^= 0x01
        return self.original(bytes(forged), parsed.counter, parsed.card_unique_data)

    def transport(self, inner: Any) -> Any:
        faults = self

        class NotingRelay:
            def transmit(self, capdu: bytes) -> bytes:
                faults.current_ins = capdu[1]
                try:
                    return inner.transmit(capdu)
                finally:
                    faults.current_ins = None

        return NotingRelay()


@pytest.fixture
def receipt_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[ReceiptFaults]:
    faults = ReceiptFaults(dm.build_confirmation)
    # The engine parses and verifies receipts but never builds one: only the card is affected.
    monkeypatch.setattr(dm, "build_confirmation", faults.build_confirmation)
    yield faults


def world_with_applet() -> tuple[OtaWorld, Enrollment]:
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    release = world.releases[PACKAGE]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    return world, enroll(world)


def present_faulty(world: OtaWorld, faults: ReceiptFaults, operation: str, fault: str) -> None:
    """Present the card with ``fault`` on ``operation``'s receipt; the session must not succeed."""
    faults.target_ins, faults.fault = INS_FOR_OPERATION[operation], fault
    try:
        result = world.present(transport=faults.transport(world.card_transport()))
    except RelayError:
        pass
    else:
        assert not result.ok, result
    finally:
        faults.target_ins, faults.fault = None, ""
    assert faults.applied == 1, f"the {operation} receipt was never altered"


def assert_refused(
    world: OtaWorld,
    fault: str,
    operation: str,
    *,
    records_before: dict[str, set[str]],
    counter_before: int,
    receipts_before: int,
) -> None:
    reason = REFUSAL_FOR_FAULT[fault]
    job = CardJob.objects.filter(card=world.card).order_by("-pk").first()
    assert job is not None
    assert job.state != CardJob.State.DONE, job.state
    assert reason in job.last_error, job.last_error
    session = CardSession.objects.filter(card=world.card).order_by("-created_at").first()
    assert session is not None and session.state == CardSession.State.REJECTED
    assert reason in session.closed_reason
    rejections = AuditEntry.objects.filter(action="session.rejected", card_cin=world.card.cin)
    assert rejections.filter(reason__contains=reason).exists()
    assert recorded(world) == records_before, "the records changed on a refused receipt"
    assert Card.objects.get(pk=world.card.pk).receipt_counter == counter_before
    assert AuditEntry.objects.filter(action=f"receipt.{operation}", card_cin=world.card.cin).count() == receipts_before


def recorded(world: OtaWorld) -> dict[str, set[str]]:
    """The platform's records of the card's bank SDs (any state), their applets and packages."""
    sds = SecurityDomain.objects.filter(card=world.card, is_isd=False)
    return {
        "sds": {f"{aid}:{state}" for aid, state in sds.values_list("aid", "state")},
        "applets": set(AppletInstance.objects.filter(security_domain__in=sds).values_list("instance_aid", flat=True)),
        "packages": set(CardPackage.objects.filter(security_domain__in=sds).values_list("package_aid", flat=True)),
    }


# The enrollment's LOAD is the card's first delegated operation, with nothing earlier to copy: its
# replay is test_reload_refuses_the_first_loads_receipt_replayed.
ENROLLMENT_CASES = [
    ("load", "forged"),
    ("load", "missing"),
    ("install", "forged"),
    ("install", "missing"),
    ("install", "replayed"),
]


@pytest.mark.parametrize(("operation", "fault"), ENROLLMENT_CASES, ids=[f"{o}-{f}" for o, f in ENROLLMENT_CASES])
def test_enrollment_refuses_a_bad_receipt(receipt_faults: ReceiptFaults, operation: str, fault: str) -> None:
    """INSTALL's replayed receipt is the same session's LOAD receipt."""
    world, _enrollment = world_with_applet()
    before = {"counter": world.card.receipt_counter}
    present_faulty(world, receipt_faults, operation, fault)
    records = platform_view(world)
    if operation == "load":
        assert PACKAGE not in records["packages"], "a package recorded on a refused receipt"
    assert INSTANCE not in records["applets"], "an applet recorded on a refused receipt"
    job = CardJob.objects.get(card=world.card)
    assert job.state == CardJob.State.PENDING
    reason = REFUSAL_FOR_FAULT[fault]
    assert reason in job.last_error, job.last_error
    session = CardSession.objects.filter(card=world.card, state=CardSession.State.REJECTED).get()
    assert reason in session.closed_reason
    rejections = AuditEntry.objects.filter(action="session.rejected", card_cin=world.card.cin)
    assert rejections.filter(reason__contains=reason).exists()
    assert not AuditEntry.objects.filter(action=f"receipt.{operation}", card_cin=world.card.cin).exists()
    if operation == "load":
        assert Card.objects.get(pk=world.card.pk).receipt_counter == before["counter"]

    assert world.present().ok  # an honest presentation then completes the enrollment
    assert CardJob.objects.get(card=world.card).state == CardJob.State.DONE
    assert_registry_matches_records(world)


@pytest.mark.parametrize("fault", ["forged", "missing", "replayed"])
def test_package_removal_refuses_a_bad_delete_receipt(receipt_faults: ReceiptFaults, fault: str) -> None:
    """The bank removes its package in its SSD's channel with a DM token; the replayed receipt is
    the enrollment's INSTALL receipt (an earlier job), the card's counter having moved on since."""
    world, enrollment = world_with_applet()
    assert world.present(transport=receipt_faults.transport(world.card_transport())).ok
    assert receipt_faults.genuine, "the enrollment gave no receipt to copy"
    sd = Enrollment.objects.get(pk=enrollment.pk).security_domain
    update_applet_job(world, sd, {"remove": [PACKAGE]})
    records_before = recorded(world)
    assert PACKAGE in records_before["packages"]
    counter_before = Card.objects.get(pk=world.card.pk).receipt_counter
    receipts_before = AuditEntry.objects.filter(action="receipt.delete", card_cin=world.card.cin).count()

    present_faulty(world, receipt_faults, "delete", fault)
    assert_refused(
        world,
        fault,
        "delete",
        records_before=records_before,
        counter_before=counter_before,
        receipts_before=receipts_before,
    )

    # The card did delete the package before its answer was refused. An honest presentation next
    # either proves the deletion (R-MAC'd) and completes, or cannot (a 6A88 carries no R-MAC) and
    # keeps the job pending with the package still recorded: never a record the card contradicts
    # and never a job done on an unproven deletion.
    world.present()
    job = CardJob.objects.get(card=world.card, kind=CardJob.Kind.UPDATE_APPLET)
    still_recorded = CardPackage.objects.filter(security_domain=sd, package_aid=PACKAGE).exists()
    if job.state == CardJob.State.DONE:
        assert not still_recorded
    else:
        assert job.state == CardJob.State.PENDING and still_recorded, (job.state, job.last_error)


def test_reload_refuses_the_first_loads_receipt_replayed(receipt_faults: ReceiptFaults) -> None:
    """The bank removes its package and loads it again: the card answers the new LOAD with the
    genuine receipt of the first LOAD of the very same package (same AIDs, valid MAC), whose
    confirmation counter the platform has already seen."""
    world, enrollment = world_with_applet()
    honest = receipt_faults.transport(world.card_transport())
    assert world.present(transport=honest).ok  # LOAD and INSTALL receipts
    first_load_receipt = 0
    sd = Enrollment.objects.get(pk=enrollment.pk).security_domain
    release = world.releases[PACKAGE]
    update_applet_job(world, sd, {"remove": [PACKAGE]})
    assert world.present(transport=receipt_faults.transport(world.card_transport())).ok  # DELETE receipt
    assert len(receipt_faults.genuine) == 3
    update_applet_job(world, sd, {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    records_before = recorded(world)
    assert PACKAGE not in records_before["packages"]
    counter_before = Card.objects.get(pk=world.card.pk).receipt_counter
    receipts_before = AuditEntry.objects.filter(action="receipt.load", card_cin=world.card.cin).count()

    receipt_faults.replay_index = first_load_receipt
    present_faulty(world, receipt_faults, "load", "replayed")
    assert_refused(
        world,
        "replayed",
        "load",
        records_before=records_before,
        counter_before=counter_before,
        receipts_before=receipts_before,
    )
