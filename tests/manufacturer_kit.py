"""Test kit for real cards from a manufacturer's file: the manufacturer's side (a transport key
registered with the agency, files written under it) and a citizen's real card made from one line
of such a file with ``cardsim init --manufacturer-file`` (what the card in the citizen's hand is)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from cards import manufacturer
from cards.emulation import token_verification_keyset
from cards.models import Card
from cards.services import assign_holder
from cardsim.cli import main as cardsim
from gp import manufacturer_file as mf
from tests.factories import make_user
from updates import services as update_services


def token_spki_der(agency: Any) -> bytes:
    public = serialization.load_pem_public_key(token_verification_keyset(agency).public_key.encode())
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Maker:
    """The manufacturer's side: a transport key registered with the agency, files written under it."""

    def __init__(self, agency: Any, *, register: bool = True) -> None:
        self.agency = agency
        self.transport_key = secrets.token_bytes(16)
        if register:
            manufacturer.register_transport_key(
                agency=agency, key=self.transport_key, kcv=mf.kcv("aes", self.transport_key)
            )
        self.token_sha256 = hashlib.sha256(token_spki_der(agency)).hexdigest()

    def lines(self, cards: list[mf.CardKeys], *, transport_key: bytes | None = None) -> list[bytes]:
        key = transport_key or self.transport_key
        head = mf.header_line(
            manufacturer="Acme Card Works",
            iin="4543415244",
            transport_key=self.transport_key,  # the header names the registered key
            token_key_sha256=self.token_sha256,
            cards=len(cards),
        )
        return [head, *(mf.card_line(card, key) for card in cards)]

    def file(self, cards: list[mf.CardKeys], **kwargs: Any) -> bytes:
        return mf.seal(self.lines(cards, **kwargs), self.transport_key)


@dataclass
class RealCard:
    card: Card  # the registry's record, imported from the file
    state: Path  # the card itself: cardsim's state file made from its line
    holder: Any
    token: str  # the holder's agent credential


def stock_card(agency: Any, directory: Path, *, line: int = 3) -> tuple[Card, Path]:
    """Import a file of three cards and make the card of ``line`` with ``cardsim init``: the
    registry's record (no holder yet: the agency's stock) and the card's state file."""
    maker = Maker(agency)
    cards = mf.random_cards(3)
    file = directory / "manufacturer.jsonl"
    file.write_bytes(maker.file(cards))
    manufacturer.import_manufacturer_file(agency=agency, data=file.read_bytes(), file_name=file.name)
    key_file = directory / "transport.hex"
    key_file.write_text(maker.transport_key.hex())
    token_pem = directory / "token.pem"
    token_pem.write_text(token_verification_keyset(agency).public_key)
    state = directory / "real-card.json"
    args = ["init", str(state), "--manufacturer-file", str(file), "--line", str(line)]
    assert cardsim([*args, "--transport-key-file", str(key_file), "--token-key", str(token_pem)]) == 0
    key_file.unlink()
    return Card.objects.get(cin=cards[line - 2].cin), state


def real_card(agency: Any, directory: Path, *, holder: str = "realholder", line: int = 3) -> RealCard:
    """A card from :func:`stock_card`; its holder is a new citizen with an agent credential."""
    card, state = stock_card(agency, directory, line=line)
    citizen = make_user(holder)
    operator = make_user(f"{holder}_issuer")
    card = assign_holder(card=card, holder=citizen, actor=operator)
    _credential, token = update_services.issue_agent_credential(user=citizen, name="reader")
    return RealCard(card=card, state=state, holder=citizen, token=token)
