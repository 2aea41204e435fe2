"""Issue 18's code signing and personalisation against the key service as the bank runs it: its
own process (``python -m keyservice serve``), its own SoftHSM2 token made by ``init``, the bank's
officer approving with ``sign-release`` while it serves."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from cardsim.transport import InProcessCard
from gp import dap, sealed
from gp.apdu import SW
from gp.cap import LoadFile
from gp.tlv import encode_tlv
from issuers.bank_service_client import BankServiceClient, ClientIdentity, Unwrapped
from keyservice.journal import verify_file
from tests.cardsim.hostlib import HostSession
from tests.keyservice.cards import BANK_PREFIX, SSD_AID, Relay, card_ca_pem
from tests.keyservice.test_end_to_end import personalise
from tests.keyservice_process import free_port_pair, serving
from tests.shared_data import cap_file

REPO = Path(__file__).resolve().parents[2]
INSTANCE = BANK_PREFIX + bytes.fromhex("0101")


def keyservice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyservice", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def test_signing_and_personalisation_through_the_served_process(
    tmp_path: Path, card: InProcessCard, platform_identity: ClientIdentity
) -> None:
    ca = tmp_path / "agency-card-ca.pem"
    ca.write_bytes(card_ca_pem(card))
    directory, port = tmp_path / "alpha", free_port_pair()
    result = keyservice(
        "init", str(directory), "--bank", "alpha", "--aid-prefix", BANK_PREFIX.hex(), "--card-ca", str(ca),
        "--platform-cert", str(platform_identity.cert_path), "--port", str(port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    isd = HostSession(card.transmit).open()
    empty = LoadFile.from_path(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    assert all(sw == SW.SUCCESS for _, sw in isd.load(empty, sd_aid=SSD_AID))
    assert isd.install(empty.package_aid, empty.applet_aids[0], INSTANCE)[1] == SW.SUCCESS

    with (
        serving(directory, tmp_path / "alpha.log"),
        BankServiceClient(f"https://127.0.0.1:{port}", (directory / "tls" / "cert.pem").read_text(), platform_identity)
        as client,
    ):  # fmt: skip
        digest = dap.lfdb_hash(empty.load_file_data_block())
        assert (
            keyservice("sign-release", digest.hex(), "--directory", str(directory), "--by", "officer").returncode == 0
        )
        assert dap.verify(client.dap_public_key(), digest, client.dap_signature(digest.hex()))

        personalise(Relay(client, card))
        relay = Relay(client, card)
        assert relay.open_scp03() == SW.SUCCESS
        data = encode_tlv(0xDF20, b"balance 1000")
        envelope = sealed.seal(client.personalization_public_key(), data, cin=relay.cin, aid=INSTANCE)
        spec = {"instance": INSTANCE.hex(), "sealed": base64.b64encode(envelope).decode(), "format": "ber-tlv"}
        relay.exchange([{"store_data": spec}, {"put_dap_key": {}}])
        answers = relay.exchange([]).responses
        assert all(isinstance(a, Unwrapped) and a.sw == SW.SUCCESS and a.authenticated for a in answers)
    assert card.personalization(INSTANCE.hex().upper()) == encode_tlv(0xDF20, b"balance 1000")
    assert f"{dap.DAP_KVN:02X}" in card.state["sds"][SSD_AID.hex().upper()]["keys"]
    assert b"balance" not in (tmp_path / "alpha.log").read_bytes()
    assert verify_file(directory / "journal.jsonl").size > 0
    assert keyservice("journal", "verify", str(directory)).returncode == 0
