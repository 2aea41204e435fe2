"""Emulated cards for the key service tests, and the platform's side of a relay: it sends what
the service wraps to the card and hands the card's answers back, as updates' relay does."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cardsim.cli import main as cardsim_main
from cardsim.transport import InProcessCard
from gp import commands as c
from gp.aids import SSD_MODULE_AID, SSD_PACKAGE_AID
from gp.apdu import SW
from gp.tlv import encode_tlv
from issuers.bank_service_client import BankServiceClient, Exchanged, IntegrityFailure, Unwrapped
from tests.cardsim.hostlib import HostSession

BANK_PREFIX = bytes.fromhex("F0414C5048")
SSD_AID = BANK_PREFIX + bytes.fromhex("0153")
BANK_KVN = 0x30
SCP03_I = 0x70


def sw_of(rapdu: bytes) -> int:
    return int.from_bytes(rapdu[-2:], "big")


def write_card_ca_key(path: Path) -> Path:
    """The agency's card CA private key (PEM), which certifies every card's attestation key."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def new_card(path: Path, cin: str = "0A0B0C0D0E0F1011", ca_key: Path | None = None) -> InProcessCard:
    """An emulated card with SCP11 (attestation key); ``ca_key`` None: a card CA of its own."""
    extra = ["--ca-key", str(ca_key)] if ca_key is not None else []
    assert cardsim_main(["init", str(path), "--scp", "11", "--cin", cin, *extra]) == 0
    return InProcessCard(path)


def cin_of(card: InProcessCard) -> bytes:
    return bytes.fromhex(card.state["cin"])


def card_ca_pem(card: InProcessCard) -> bytes:
    """The card issuer CA's public key (PEM), as the agency hands it to a bank's service."""
    point = bytes.fromhex(card.state["attestation"]["issuer"]["q"])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def install_scp11_ssd(card: InProcessCard, aid: bytes = SSD_AID) -> None:
    """INSTALL [for install and make selectable] of an SSD for SCP11 (``81 02 11 00``) by the ISD."""
    isd = HostSession(card.transmit).open()
    params = c.install_parameters(c.sd_install_parameters(0x11, 0x00))
    _, sw = isd.install(SSD_PACKAGE_AID, SSD_MODULE_AID, aid, privileges=b"\x80", params=params)
    assert sw == SW.SUCCESS


def certificate_store(card: InProcessCard, sd_aid: bytes, kid: int = 0x13, kvn: int = 0x01) -> bytes:
    """SELECT the SD and GET DATA BF21 with ``A6 { 83 { KID KVN } }`` (Amd F §7.4.2): the answer data."""
    assert sw_of(card.transmit(c.select(sd_aid))) == SW.SUCCESS
    data = encode_tlv(0xA6, encode_tlv(0x83, bytes((kid, kvn))))
    answer = card.transmit(bytes((0x80, 0xCA, 0xBF, 0x21, len(data))) + data + b"\x00")
    assert sw_of(answer) == SW.SUCCESS, answer[-2:].hex()
    return answer[:-2]


@dataclass
class Relay:
    """One card session relayed through a bank's service."""

    client: BankServiceClient
    card: InProcessCard
    sd_aid: bytes = SSD_AID
    session: str = field(default_factory=lambda: f"cs-{secrets.token_hex(6)}")
    state: str | None = None
    pending: list[bytes] = field(default_factory=list)

    @property
    def cin(self) -> bytes:
        return cin_of(self.card)

    def open_scp11b(self) -> bytes:
        certificates = certificate_store(self.card, self.sd_aid)
        opened = self.client.open_scp11b(
            session=self.session, card=self.cin, sd_aid=self.sd_aid, kid=0x13, kvn=0x01, certificates=certificates
        )
        self.state = opened.state
        (internal_authenticate,) = opened.commands
        answer = self.card.transmit(internal_authenticate)
        assert sw_of(answer) == SW.SUCCESS, answer[-2:].hex()
        self.pending = [answer]
        return answer

    def open_scp03(self, kvn: int = BANK_KVN) -> int:
        """SELECT, a keyless INITIALIZE UPDATE, the service's EXTERNAL AUTHENTICATE; its SW."""
        assert sw_of(self.card.transmit(c.select(self.sd_aid))) == SW.SUCCESS
        host_challenge = secrets.token_bytes(8)
        response = self.card.transmit(bytes((0x80, 0x50, kvn, 0x00, 8)) + host_challenge + b"\x00")
        opened = self.client.open_scp03(
            session=self.session,
            card=self.cin,
            sd_aid=self.sd_aid,
            kvn=kvn,
            i=SCP03_I,
            host_challenge=host_challenge,
            initialize_update_response=response,
        )
        self.state = opened.state
        (external_authenticate,) = opened.commands
        self.pending = []
        return sw_of(self.card.transmit(external_authenticate))

    def exchange(self, commands: list[dict[str, object]]) -> Exchanged:
        """Hand the card's pending answers back, have ``commands`` wrapped, send them to the card."""
        assert self.state is not None
        answer = self.client.exchange(session=self.session, state=self.state, responses=self.pending, commands=commands)
        self.state = answer.state
        self.pending = [self.card.transmit(command) for command in answer.commands]
        return answer

    def run(self, commands: list[dict[str, object]]) -> list[Unwrapped | IntegrityFailure]:
        """Wrap ``commands``, send them, and unwrap the card's answers (two exchanges)."""
        self.exchange(commands)
        return self.exchange([]).responses
