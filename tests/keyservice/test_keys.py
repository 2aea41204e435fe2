"""The bank's keys are derived in the bank's token and never leave the service: not in an HTTP
answer, not in the journal; the master key's value cannot be read from the token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cardsim.transport import InProcessCard
from gp import commands as c
from gp.apdu import SW
from issuers.bank_service_client import BankServiceClient, ClientIdentity
from keyservice.directory import Config, open_token
from keyservice.token import TokenUnavailable, derivation_context
from tests.bankservice import RunningService
from tests.keyservice.cards import BANK_KVN, SSD_AID, Relay, cin_of, install_scp11_ssd, new_card
from tests.keyservice.test_end_to_end import personalise


class RecordingClient(BankServiceClient):
    """The platform's client, keeping every answer document it received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: list[str] = []

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = super()._request(method, path, body)
        self.answers.append(json.dumps(answer))
        return answer


def test_two_cards_two_sds_two_versions_get_different_keys(alpha: RunningService, tmp_path: Path) -> None:
    one, two = bytes.fromhex("0A0B0C0D0E0F1011"), bytes.fromhex("0A0B0C0D0E0F1012")
    keys = {
        alpha.derive_static_keys(one, SSD_AID, BANK_KVN),
        alpha.derive_static_keys(two, SSD_AID, BANK_KVN),
        alpha.derive_static_keys(one, SSD_AID + b"\x01", BANK_KVN),
        alpha.derive_static_keys(one, SSD_AID, BANK_KVN + 1),
    }
    assert len(keys) == 4
    for key_set in keys:
        assert len({key_set.enc, key_set.mac, key_set.dek}) == 3 and len(key_set.enc) == 16
    assert alpha.derive_static_keys(one, SSD_AID, BANK_KVN) == alpha.derive_static_keys(one, SSD_AID, BANK_KVN)
    # The context is length-prefixed: no two (card, SD) pairs share one.
    assert derivation_context(b"\x01\x02", b"\x03" * 5, 1) != derivation_context(b"\x01", b"\x02" + b"\x03" * 5, 1)


def test_the_master_key_cannot_be_read_from_the_token(alpha: RunningService) -> None:
    alpha.derive_static_keys(bytes(8), SSD_AID, BANK_KVN)  # creates the master of this version
    token = open_token(alpha.directory, Config.load(alpha.directory))
    try:
        assert BANK_KVN in token.key_versions()
        with pytest.raises(TokenUnavailable, match="sensitive"):
            token.master_key_value(BANK_KVN)
    finally:
        token.close()


def test_no_key_bytes_in_any_answer_or_in_the_journal(
    alpha: RunningService, card: InProcessCard, platform_identity: ClientIdentity, tmp_path: Path, card_ca_key: Path
) -> None:
    client = RecordingClient(alpha.url, alpha.certificate_pem, platform_identity)
    second = new_card(tmp_path / "second.json", cin="0A0B0C0D0E0F1099", ca_key=card_ca_key)
    install_scp11_ssd(second)
    for one in (card, second):
        personalise(Relay(client, one))
        relay = Relay(client, one)
        assert relay.open_scp03() == SW.SUCCESS
        relay.run([{"apdu": c.get_status(0x40)}, {"put_key": {"kvn": BANK_KVN + 1, "replace": BANK_KVN}}])
    client.health()
    client.journal()
    client.close()
    keys = [
        alpha.derive_static_keys(cin_of(one), SSD_AID, kvn)
        for one in (card, second)
        for kvn in (BANK_KVN, BANK_KVN + 1)
    ]
    assert keys[0] != keys[2]  # two cards, two key sets
    haystack = "\n".join(client.answers) + (alpha.directory / "journal.jsonl").read_text()
    assert len(client.answers) > 10
    for key_set in keys:
        for key in (key_set.enc, key_set.mac, key_set.dek):
            assert key.hex() not in haystack.lower()
