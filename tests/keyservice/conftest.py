from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cardsim.transport import InProcessCard
from issuers.bank_service_client import BankServiceClient, ClientIdentity
from tests.bankservice import BankServiceFactory, RunningService
from tests.keyservice.cards import BANK_PREFIX, card_ca_pem, install_scp11_ssd, new_card, write_card_ca_key


@pytest.fixture
def card_ca_key(tmp_path: Path) -> Path:
    """The agency's card CA (private key PEM): it certifies the attestation key of every card."""
    return write_card_ca_key(tmp_path / "card-ca.key")


@pytest.fixture
def card(tmp_path: Path, card_ca_key: Path) -> InProcessCard:
    """An emulated card with an attestation key and the bank's new SSD installed for SCP11."""
    card = new_card(tmp_path / "card.json", ca_key=card_ca_key)
    install_scp11_ssd(card)
    return card


@pytest.fixture
def alpha(bank_service_factory: BankServiceFactory, card: InProcessCard) -> RunningService:
    return bank_service_factory("alpha", aid_prefixes=[BANK_PREFIX], card_ca_pem=card_ca_pem(card))


@pytest.fixture
def client(alpha: RunningService, platform_identity: ClientIdentity) -> Iterator[BankServiceClient]:
    client = BankServiceClient(alpha.url, alpha.certificate_pem, platform_identity)
    yield client
    client.close()
