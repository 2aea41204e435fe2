"""The journal's hash chain and the bank's command line (``python -m keyservice``)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cardsim.transport import InProcessCard
from issuers.bank_service_client import BankServiceClient, ClientIdentity
from keyservice.journal import verify_file
from keyservice.policy import Policy
from tests.bankservice import RunningService
from tests.keyservice.cards import BANK_PREFIX, Relay, card_ca_pem
from tests.keyservice.test_end_to_end import personalise

REPO = Path(__file__).resolve().parents[2]


def keyservice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyservice", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def test_the_journal_chain_verifies_and_an_edited_or_removed_line_is_detected(
    client: BankServiceClient, card: InProcessCard, alpha: RunningService
) -> None:
    relay = Relay(client, card)
    personalise(relay)
    page = client.journal()
    entries = page["entries"]
    assert [e["action"] for e in entries] == ["open", "wrap", "wrap", "wrap"]
    assert entries[0]["session"] == relay.session and entries[0]["card"] == relay.cin.hex().upper()
    assert [cmd["ins"] for cmd in entries[2]["commands"]] == ["D8", "F0"]
    assert page["head"] == {"size": 4, "hash": entries[-1]["hash"]}
    assert client.journal(after=2)["entries"] == entries[2:]
    path = alpha.directory / "journal.jsonl"
    assert verify_file(path).size == 4
    assert keyservice("journal", "verify", str(alpha.directory)).returncode == 0

    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["outcome"] = "refused"
    for tampered in ([lines[0], json.dumps(edited), *lines[2:]], [lines[0], *lines[2:]], [*lines[:3], lines[3][:-5]]):
        path.write_text("\n".join(tampered) + "\n")
        result = keyservice("journal", "verify", str(alpha.directory))
        assert result.returncode == 1 and "does NOT verify" in result.stderr
    path.write_text("\n".join(lines) + "\n")
    assert keyservice("journal", "verify", str(alpha.directory)).returncode == 0


def test_init_approve_release_and_journal_verify_from_the_command_line(
    tmp_path: Path, card: InProcessCard, platform_identity: ClientIdentity
) -> None:
    ca = tmp_path / "agency-card-ca.pem"
    ca.write_bytes(card_ca_pem(card))
    directory = tmp_path / "alpha"
    result = keyservice(
        "init",
        str(directory),
        "--bank",
        "alpha",
        "--aid-prefix",
        BANK_PREFIX.hex(),
        "--card-ca",
        str(ca),
        "--platform-cert",
        str(platform_identity.cert_path),
    )
    assert result.returncode == 0, result.stderr
    assert "certificate SHA-256" in result.stdout
    assert (directory / "pin").stat().st_mode & 0o777 == 0o600
    assert (directory / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (directory / "softhsm2.conf").exists() and any((directory / "tokens").iterdir())
    config = json.loads((directory / "config.json").read_text())
    assert config["bank"] == "alpha" and config["token"]["softhsm_conf"] == str(directory / "softhsm2.conf")
    digest = "ab" * 32
    result = keyservice(
        "approve-release", str(directory), "--package-aid", "F0414C504810", "--hash", digest, "--by", "alice"
    )
    assert result.returncode == 0, result.stderr
    (release,) = Policy.load(directory / "policy.json").releases
    assert release.lfdb_sha256.hex() == digest and release.approved_by == "alice"
    assert (
        keyservice(
            "approve-release", str(directory), "--package-aid", "F0414C504810", "--hash", "ab", "--by", "x"
        ).returncode
        == 2
    )
    assert keyservice("journal", "verify", str(directory)).returncode == 0
    # A second init over the same directory is refused (the token and the PIN stay).
    again = keyservice(
        "init", str(directory), "--bank", "alpha", "--aid-prefix", "F0", "--card-ca", str(ca),
        "--platform-cert", str(platform_identity.cert_path),
    )  # fmt: skip
    assert again.returncode != 0


def test_the_oce_key_is_made_in_the_token_and_its_certificate_installed(client: BankServiceClient) -> None:
    csr = x509.load_pem_x509_csr(client.oce_csr().encode())
    assert csr.is_signature_valid
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agency OCE CA")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_name)
        .public_key(public)
        .serial_number(0x1234)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(ca_key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    installed = client.install_oce_certificate(pem)["oce_certificate"]
    assert installed["serial"] == "1234"
    assert client.health()["oce_certificate"] == installed


def test_two_writers_chain_onto_each_others_entries(tmp_path: Path) -> None:
    """The service and ``sign-release`` each hold a Journal on one file: each append chains to the
    last line in the file (under flock), not to the head its own process saw last."""
    from keyservice.journal import Journal

    path = tmp_path / "journal.jsonl"
    service, officer = Journal(path), Journal(path)
    service.append(action="open")
    officer.append(action="dap_approved")
    entry = service.append(action="dap_signed")
    assert entry["seq"] == 3 and entry["prev"] == officer.head.hash
    assert verify_file(path).size == 3
    assert service.refresh() == officer.refresh() == verify_file(path)


def test_sign_release_refuses_a_journal_that_does_not_verify(alpha: RunningService) -> None:
    path = alpha.directory / "journal.jsonl"
    path.write_text('{"seq": 1, "hash": "00", "prev": "00"}\n')
    result = keyservice("sign-release", "ab" * 32, "--directory", str(alpha.directory))
    assert result.returncode == 1 and "does NOT verify" in result.stderr and "Traceback" not in result.stderr
    assert len(path.read_text().splitlines()) == 1  # nothing appended


def test_health_counts_entries_another_process_appended(client: BankServiceClient, alpha: RunningService) -> None:
    assert client.health()["journal"]["size"] == 0
    assert keyservice("sign-release", "ab" * 32, "--directory", str(alpha.directory), "--by", "o").returncode == 0
    health = client.health()["journal"]
    assert health == {"size": 1, "head": verify_file(alpha.directory / "journal.jsonl").hash}
