"""Personalisation through the bank's key service (issue 18, docs/keyservice.md "store_data"):
the back office seals each card's data for one instance to the token's ``perso`` key; the
service opens it in the token and sends INSTALL [for personalization] and STORE DATA inside the
bank's channel with C-DEC. The data is never on the wire in clear, nor in the journal or log."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cardsim import card as cardsim_card
from cardsim.transport import InProcessCard
from gp import commands as c
from gp import dap, sealed
from gp.apdu import SW, CommandAPDU
from gp.cap import LoadFile
from gp.tlv import encode_tlv
from issuers.bank_service_client import (
    BankServiceClient,
    BankServiceRefused,
    BankServiceRequestError,
    Unwrapped,
)
from tests.bankservice import RunningService
from tests.cardsim.hostlib import HostSession
from tests.keyservice.cards import BANK_PREFIX, SSD_AID, Relay, cin_of
from tests.keyservice.test_end_to_end import personalise
from tests.shared_data import cap_file

INSTANCE = BANK_PREFIX + bytes.fromhex("0101")
OTHER_INSTANCE = BANK_PREFIX + bytes.fromhex("0102")
# Five BER-TLV objects of 93 bytes: three STORE DATA blocks of whole objects (at most 200 bytes each).
SECRET_VALUES = [bytes([0x40 + i]) * 90 for i in range(5)]
DATA = b"".join(encode_tlv(0xDF20 + i, value) for i, value in enumerate(SECRET_VALUES))


@pytest.fixture
def instance_card(card: InProcessCard) -> InProcessCard:
    """The card with the bank's SSD holding a package and one instance (the ISD put them there)."""
    isd = HostSession(card.transmit).open()
    empty = LoadFile.from_path(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    assert all(sw == SW.SUCCESS for _, sw in isd.load(empty, sd_aid=SSD_AID))
    assert isd.install(empty.package_aid, empty.applet_aids[0], INSTANCE)[1] == SW.SUCCESS
    return card


@pytest.fixture
def relay(client: BankServiceClient, instance_card: InProcessCard) -> Relay:
    """An SCP03 channel with the bank's SSD (keys the service put in an SCP11b enrolment)."""
    personalise(Relay(client, instance_card))
    relay = Relay(client, instance_card)
    assert relay.open_scp03() == SW.SUCCESS
    return relay


def item(envelope: bytes, instance: bytes = INSTANCE, fmt: str = "ber-tlv") -> dict[str, object]:
    return {"store_data": {"instance": instance.hex(), "sealed": base64.b64encode(envelope).decode(), "format": fmt}}


def seal_for(client: BankServiceClient, relay: Relay, data: bytes = DATA, instance: bytes = INSTANCE) -> bytes:
    return sealed.seal(client.personalization_public_key(), data, cin=relay.cin, aid=instance)


class Recorder:
    """What the card receives after C-DEC: the plain INSTALL and STORE DATA commands."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, answer_ok: bool = False) -> None:
        self.plain: list[bytes] = []
        for ins in (0xE6, 0xE2):
            handler, gp_class = cardsim_card.DISPATCH[ins]
            monkeypatch.setitem(cardsim_card.DISPATCH, ins, (self._wrap(handler, answer_ok), gp_class))

    def _wrap(self, handler: Callable[..., bytes], answer_ok: bool) -> Callable[..., bytes]:
        def record(card: object, cmd: CommandAPDU, plain: bytes) -> bytes:
            self.plain.append(plain)
            return b"\x90\x00" if answer_ok else handler(card, cmd, plain)

        return record


def test_sealed_data_reaches_the_instance_encrypted_in_the_bank_channel(
    client: BankServiceClient,
    relay: Relay,
    instance_card: InProcessCard,
    alpha: RunningService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder = Recorder(monkeypatch)
    wire = relay.exchange([item(seal_for(client, relay))]).commands
    assert len(wire) == 4  # INSTALL [for personalization], three STORE DATA blocks
    for value in SECRET_VALUES:
        assert all(value[:16] not in command for command in wire)  # C-DEC: never in clear on the wire
    answers = relay.exchange([]).responses
    assert all(isinstance(a, Unwrapped) and a.sw == SW.SUCCESS and a.authenticated for a in answers)

    install, *blocks = recorder.plain
    assert install == c.install_for_personalization(INSTANCE)  # 80 E6 20 00 (GPC §11.5.2.3.6)
    assert [(b[2], b[3]) for b in blocks] == [(0x10, 0), (0x10, 1), (0x90, 2)]  # BER-TLV, last-block bit, numbers
    assert b"".join(CommandAPDU.from_bytes(b).data for b in blocks) == DATA
    assert all(len(CommandAPDU.from_bytes(b).data) <= 200 for b in blocks)
    assert instance_card.personalization(INSTANCE.hex().upper()) == DATA  # the applet holds the data, whole

    # Neither the journal nor the service's log holds the data (or its hex).
    journal = (alpha.directory / "journal.jsonl").read_text()
    for value in SECRET_VALUES:
        for text in (journal, caplog.text):
            assert value[:16].hex() not in text.lower() and value[:16].decode() not in text
    wrap = client.journal()["entries"][-2]
    assert [(x["ins"], x["aids"]) for x in wrap["commands"]] == [("E6", [INSTANCE.hex().upper()])] + [
        ("E2", [INSTANCE.hex().upper()])
    ] * 3


def test_raw_data_is_cut_into_numbered_blocks(
    client: BankServiceClient, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch, answer_ok=True)
    data = bytes(range(256)) + bytes(range(200))
    assert len(relay.exchange([item(seal_for(client, relay, data), fmt="raw")]).commands) == 4
    relay.exchange([])
    _, *blocks = recorder.plain
    assert [(b[2], b[3]) for b in blocks] == [(0x00, 0), (0x00, 1), (0x80, 2)]
    assert [len(CommandAPDU.from_bytes(b).data) for b in blocks] == [200, 200, 56]
    assert b"".join(CommandAPDU.from_bytes(b).data for b in blocks) == data


def test_an_envelope_for_another_card_instance_or_key_is_refused_and_moves_nothing(
    client: BankServiceClient, relay: Relay
) -> None:
    point = client.personalization_public_key()
    stranger = dap.public_point(ec.generate_private_key(ec.SECP256R1()).public_key())
    other_card = bytes.fromhex("0A0B0C0D0E0F1099")
    envelopes = {
        "another card": sealed.seal(point, DATA, cin=other_card, aid=INSTANCE),
        "another instance": sealed.seal(point, DATA, cin=relay.cin, aid=OTHER_INSTANCE),
        "another key": sealed.seal(stranger, DATA, cin=relay.cin, aid=INSTANCE),
        "altered": bytes(seal_for(client, relay)[:-1]) + b"\x00",
        "not an envelope": b"personalisation data in clear",
        "off the curve": b"ECSD\x01\x04" + bytes(64) + bytes(40),
    }
    state = relay.state
    for name, envelope in envelopes.items():
        with pytest.raises(BankServiceRequestError, match=f"store_data for {INSTANCE.hex().upper()}") as error:
            client.exchange(session=relay.session, state=state or "", responses=[], commands=[item(envelope)])
        assert error.value.code == "sealed" and error.value.whose == "platform", name
    refused = [e for e in client.journal()["entries"] if e["action"] == "refused"]
    assert len(refused) == len(envelopes)
    assert all(DATA.hex() not in str(e).lower() for e in refused)
    # An instance outside the bank's range is the policy's refusal (403), before any envelope opens.
    with pytest.raises(BankServiceRefused, match="outside alpha's range"):
        client.exchange(
            session=relay.session,
            state=state or "",
            responses=[],
            commands=[item(seal_for(client, relay), b"\xa0" * 7)],
        )
    # Nothing moved: the same state still wraps.
    assert relay.exchange([{"apdu": c.get_status(0x40)}]).commands


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"instance": "F0414C50480101"}, "'sealed' must be a base64 envelope"),
        ({"instance": "F0414C50480101", "sealed": "***"}, "not base64"),
        ({"instance": "F041", "sealed": "AAAA"}, "'instance' must be an AID"),
        ({"instance": 5, "sealed": "AAAA"}, "'instance' must be an AID"),
        ({"instance": "F0414C50480101", "sealed": "AAAA", "format": "xml"}, "'format' must be one of"),
        ({"instance": "F0414C50480101", "sealed": "AAAA", "extra": 1}, "store_data is"),
        ("F0414C50480101", "store_data is"),
    ],
)
def test_hostile_store_data_parameters_are_400s(
    client: BankServiceClient, relay: Relay, spec: object, message: str
) -> None:
    with pytest.raises(BankServiceRequestError, match=message) as error:
        client.exchange(session=relay.session, state=relay.state or "", responses=[], commands=[{"store_data": spec}])
    assert error.value.code == "malformed"


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"", "raw", "empty"),
        (b"\xdf\x20\x05ab", "ber-tlv", "not a sequence of BER-TLV"),
        (b"\x01\x02\x05ab", "dgi", "not a sequence of DGIs"),
        (encode_tlv(0xDF20, bytes(300)), "ber-tlv", "does not fit one STORE DATA block"),
        (bytes(200 * 256 + 1), "raw", "at most 256"),
    ],
)
def test_data_that_cannot_be_stored_is_refused_without_showing_it(
    client: BankServiceClient, relay: Relay, data: bytes, fmt: str, message: str
) -> None:
    envelope = seal_for(client, relay, data)
    with pytest.raises(BankServiceRequestError, match=message) as error:
        client.exchange(
            session=relay.session, state=relay.state or "", responses=[], commands=[item(envelope, fmt=fmt)]
        )
    assert error.value.code == "malformed"
    assert not data.strip(b"\x00") or data.hex() not in error.value.message.lower()


def test_the_personalisation_key_is_the_tokens_and_not_the_dap_key(
    client: BankServiceClient, instance_card: InProcessCard
) -> None:
    point = client.personalization_public_key()
    assert len(point) == 65 and point[0] == 0x04 and client.personalization_public_key() == point
    assert point != client.dap_public_key()
    assert cin_of(instance_card)  # the envelope binds this number
