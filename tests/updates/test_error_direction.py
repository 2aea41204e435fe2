"""Whose fault: the OTA engine rejects a session for the card's (or the relay's) bad bytes, and
reports its own misuse of ``gp`` as a bug without blaming the card or the relay."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agent.core import RelayError
from audit.models import AuditEntry
from cards.models import CardJob
from gp.errors import LocalProtocolError, SecureChannelError
from gp.scp import SCP02, SCP03
from tests.otakit import OtaWorld, build_ota_world, enroll
from updates import ota
from updates.models import AuthRefusal, CardSession

pytestmark = pytest.mark.django_db


def enrolled_world() -> OtaWorld:
    world = build_ota_world()
    enroll(world)
    return world


class FlipFirstMacedResponse:
    """Between agent and card: flips a bit of the first secured command's response that carries
    data (R-MAC'd at SCP03 security level 33), as a relay forging the card's answer would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.flipped = False

    def transmit(self, capdu: bytes) -> bytes:
        rapdu = self.inner.transmit(capdu)
        if not self.flipped and capdu[0] & 0x04 and len(rapdu) > 2:
            self.flipped = True
            return bytes([rapdu[0] ^ 0x01]) + rapdu[1:]
        return rapdu


def engine_bug_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "updates.ota" and "OTA engine bug" in r.getMessage()]


def test_a_forged_card_reply_rejects_the_session(caplog: pytest.LogCaptureFixture) -> None:
    world = enrolled_world()
    relay = FlipFirstMacedResponse(world.card_transport())
    with caplog.at_level(logging.ERROR, logger="updates.ota"), pytest.raises(RelayError):
        world.present(transport=relay)
    assert relay.flipped
    session = CardSession.objects.get(card=world.card)
    assert session.state == CardSession.State.REJECTED
    assert "R-MAC" in session.closed_reason
    assert AuditEntry.objects.filter(action="session.rejected", card_cin=world.card.cin).exists()
    assert CardJob.objects.get(card=world.card).state == CardJob.State.PENDING
    assert not engine_bug_records(caplog), "a remote error is the card's or relay's, not a bug"
    assert world.present().ok  # an honest presentation then does the work


def test_the_engines_own_misuse_of_a_channel_is_a_bug_not_the_cards_fault(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inject an engine bug: the channel it restores between exchanges was never authenticated,
    so ``gp`` refuses to unwrap with it (a local error). The exchange fails as a server bug,
    logged as one; the session is not rejected, nobody is blamed, the job is not charged."""
    world = enrolled_world()

    def restore_unopened_channel(self: ota.SessionEngine) -> SCP02 | SCP03:
        channel = self._host_channel(self.stage(), ota.KeyChoice.from_json(self.state["key"]), None)
        self._channel = channel
        return channel

    monkeypatch.setattr(ota.SessionEngine, "_restore_channel", restore_unopened_channel)
    with caplog.at_level(logging.ERROR, logger="updates.ota"), pytest.raises(RelayError, match="503") as refused:
        world.present()  # a problem document: retry later; never a 500 or a stack trace
    assert "internal error" in str(refused.value) and "Traceback" not in str(refused.value)
    records = engine_bug_records(caplog)
    assert len(records) == 1 and records[0].exc_info is not None
    error = records[0].exc_info[1]
    assert isinstance(error, SecureChannelError) and isinstance(error, LocalProtocolError)
    assert "SecureChannelError" in records[0].getMessage()
    # Not blamed on the card or the relay: no rejection, no refusal counted, no alert.
    assert not CardSession.objects.filter(card=world.card, state=CardSession.State.REJECTED).exists()
    assert not AuditEntry.objects.filter(action="session.rejected", card_cin=world.card.cin).exists()
    assert not AuthRefusal.objects.exists()
    # The session ends as the platform's failure; the job waits for the next presentation.
    session = CardSession.objects.filter(card=world.card).order_by("-pk").first()
    assert session is not None and session.state == CardSession.State.FAILED
    assert session.closed_reason == "platform error" and session.sealed_channel is None
    assert AuditEntry.objects.filter(action="session.failed", card_cin=world.card.cin).exists()
    job = CardJob.objects.get(card=world.card)
    assert job.state == CardJob.State.PENDING
    monkeypatch.undo()
    assert world.present().ok  # once the bug is gone, the work completes


def test_keys_the_platform_cannot_open_are_its_failure_never_a_500(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master key or HSM that does not match the database (found by the load bench: a database
    seeded under another installation's master key) makes custody refuse to unwrap. The relay
    answers a 503 problem document, the session fails without blaming the card or the relay, the
    job waits, and the log names the failure without a stack trace."""
    from issuers import custody
    from issuers.keyvault import UnwrapError

    world = enrolled_world()

    def wrong_master_key(*args: object, **kwargs: object) -> object:
        raise UnwrapError("KekRef(org=1, version=1, backend=software) does not open under the configured master key")

    monkeypatch.setattr(custody, "card_isd_keys", wrong_master_key)
    with caplog.at_level(logging.ERROR, logger="updates.services"), pytest.raises(RelayError, match="503") as refused:
        world.present()
    assert "Traceback" not in str(refused.value) and "master key" not in str(refused.value)
    failures = [r for r in caplog.records if "key custody failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None and "UnwrapError" in failures[0].getMessage()
    # The exchange was rolled back (the card was never recorded on it); the session failed.
    assert list(CardSession.objects.values_list("state", "closed_reason")) == [
        (CardSession.State.FAILED, "platform error")
    ]
    assert not AuthRefusal.objects.exists()
    assert CardJob.objects.get(card=world.card).state == CardJob.State.PENDING
    monkeypatch.undo()
    assert world.present().ok
