"""The bank's code signing in its key service (issue 18, docs/keyservice.md "DAP"): the DAP key
pair is made in the bank's token, signs only the Load File Data Block hashes the bank approved
with ``sign-release``, and its public key goes to the bank's SSD with PUT KEY at KVN 73."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from cardsim.transport import InProcessCard
from gp import dap
from gp.apdu import SW
from issuers.bank_service_client import BankServiceClient, BankServiceRefused, BankServiceRequestError, Unwrapped
from keyservice.directory import Config, open_token
from keyservice.journal import verify_file
from keyservice.token import TokenUnavailable
from tests.bankservice import RunningService
from tests.keyservice.cards import SSD_AID, Relay
from tests.keyservice.test_end_to_end import personalise

REPO = Path(__file__).resolve().parents[2]


def sign_release(directory: Path, digest: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyservice", "sign-release", digest, "--directory", str(directory), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_the_service_signs_only_hashes_the_bank_approved_and_the_signature_verifies(
    client: BankServiceClient, alpha: RunningService
) -> None:
    point = client.dap_public_key()
    assert len(point) == 65 and point[0] == 0x04
    assert client.dap_public_key() == point  # one key pair, made once
    approved = dap.lfdb_hash(b"\xc4\x03the load file data block")
    other = dap.lfdb_hash(b"a block the bank never approved")

    with pytest.raises(BankServiceRefused, match="not a release alpha approved") as error:
        client.dap_signature(approved.hex())
    assert error.value.code == "policy" and error.value.whose == "platform"

    # The bank's officer approves on the command line while the service runs (two writers, one journal).
    result = sign_release(alpha.directory, approved.hex(), "--by", "officer")
    assert result.returncode == 0, result.stderr
    signature = client.dap_signature(approved.hex().upper())
    assert len(signature) == 64
    assert dap.verify(point, approved, signature)  # exactly gp.dap's scheme: the card's check
    assert not dap.verify(point, other, signature)
    with pytest.raises(BankServiceRefused):
        client.dap_signature(other.hex())

    entries = client.journal()["entries"]
    assert [e["action"] for e in entries] == ["refused", "dap_approved", "dap_signed", "refused"]
    assert entries[1]["by"] == "officer" and entries[1]["lfdb_sha256"] == approved.hex()
    assert entries[2]["lfdb_sha256"] == approved.hex() and signature.hex() not in str(entries)
    assert verify_file(alpha.directory / "journal.jsonl").size == 4  # the chain holds across both writers


def test_the_dap_private_key_stays_in_the_token(client: BankServiceClient, alpha: RunningService) -> None:
    client.dap_public_key()
    token = open_token(alpha.directory, Config.load(alpha.directory))

    def read(session: object) -> bytes:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label="dap")  # type: ignore[attr-defined]
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        return bytes(key[Attribute.VALUE])

    try:
        with pytest.raises(TokenUnavailable, match="AttributeSensitive"):
            token._call(read)
    finally:
        token.close()


@pytest.mark.parametrize(
    "body",
    [{}, {"lfdb_sha256": 7}, {"lfdb_sha256": "zz" * 32}, {"lfdb_sha256": "ab" * 31}, {"lfdb_sha256": "ab" * 33}],
)
def test_a_malformed_signature_request_is_a_400(client: BankServiceClient, body: dict[str, object]) -> None:
    with pytest.raises(BankServiceRequestError, match="lfdb_sha256") as error:
        client._request("POST", "/v1/dap/signature", body)
    assert error.value.code == "malformed"


def test_sign_release_refuses_a_bad_hash_or_directory(alpha: RunningService, tmp_path: Path) -> None:
    for digest in ("ab" * 31, "not hex"):
        result = sign_release(alpha.directory, digest)
        assert result.returncode == 2 and "Traceback" not in result.stderr
    result = sign_release(tmp_path / "nowhere", "ab" * 32)
    assert result.returncode == 2 and "not a key service directory" in result.stderr
    assert not (alpha.directory / "journal.jsonl").exists()


def test_put_dap_key_puts_the_tokens_public_key_at_kvn_73_in_the_bank_channel(
    client: BankServiceClient, card: InProcessCard, alpha: RunningService
) -> None:
    personalise(Relay(client, card))
    relay = Relay(client, card)
    assert relay.open_scp03() == SW.SUCCESS
    wrapped = relay.exchange([{"put_dap_key": {}}])
    (command,) = wrapped.commands
    assert command[1] == 0xD8 and command[2] == 0x00 and command[3] == dap.DAP_KEY_ID  # PUT KEY, add, key 01
    (answer,) = relay.exchange([]).responses
    assert isinstance(answer, Unwrapped) and answer.authenticated
    assert answer.sw == SW.SUCCESS and answer.data[:1] == bytes((dap.DAP_KVN,))
    keys = card.state["sds"][SSD_AID.hex().upper()]["keys"]
    assert f"{dap.DAP_KVN:02X}" in keys
    assert client.dap_public_key().hex().upper() in str(keys[f"{dap.DAP_KVN:02X}"]).upper()
    entry = client.journal()["entries"][-2]  # the wrap of PUT KEY (the last one unwrapped its answer)
    assert entry["action"] == "wrap" and entry["session"] == relay.session
    assert [(c["ins"], c["p1"], c["p2"]) for c in entry["commands"]] == [("D8", "00", "01")]


def test_put_dap_key_replaces_and_rejects_hostile_parameters(client: BankServiceClient, card: InProcessCard) -> None:
    personalise(Relay(client, card))
    relay = Relay(client, card)
    assert relay.open_scp03() == SW.SUCCESS
    for spec in ({"replace": "yes"}, {"kvn": 1}, [], None):
        with pytest.raises(BankServiceRequestError, match="put_dap_key"):
            relay.exchange([{"put_dap_key": spec}])
    (command,) = relay.exchange([{"put_dap_key": {"replace": True}}]).commands
    assert command[2] == dap.DAP_KVN  # P1: the version it replaces


def test_put_dap_key_under_scp11b_waits_for_the_sds_key_information(
    client: BankServiceClient, card: InProcessCard
) -> None:
    relay = Relay(client, card)
    relay.open_scp11b()
    with pytest.raises(BankServiceRefused, match="GET DATA E0"):
        relay.exchange([{"put_dap_key": {}}])


def test_the_signature_is_over_the_hash_bytes_as_gp_dap_signs() -> None:
    """What the token signs (CKM_ECDSA over SHA-256 of the 32 hash bytes) is gp.dap.sign's message."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"lfdb").digest()
    signature = dap.sign(key, digest)
    assert dap.verify(dap.public_point(key.public_key()), digest, signature)


def test_a_release_the_bank_approved_in_its_policy_is_signed_too(
    client: BankServiceClient, alpha: RunningService
) -> None:
    digest = dap.lfdb_hash(b"\xc4\x03an approved release")
    with pytest.raises(BankServiceRefused):
        client.dap_signature(digest.hex())
    alpha.approve_release(bytes.fromhex("A000000777"), digest, "release-officer")  # approve-release
    signature = client.dap_signature(digest.hex())
    assert dap.verify(client.dap_public_key(), digest, signature)
    signed = [e for e in client.journal()["entries"] if e["action"] == "dap_signed"]
    assert signed and "release-officer" in signed[-1]["reason"]
