"""A service directory (docs/keyservice.md, "Running it")::

DIR/config.json      bank, token (module, label, SoftHSM2 conf or null), host, port
DIR/policy.json      the bank's policy
DIR/pin              the token's user PIN (0600)
DIR/card-ca.pem      the agency's card CA public key (BF21 chains start there)
DIR/platform.pem     the platform's pinned TLS client certificate
DIR/tls/{cert,key}.pem  the service's own TLS identity (self-signed P-256)
DIR/journal.jsonl    the journal
DIR/softhsm2.conf, DIR/tokens/  the bank's own SoftHSM2 (when init made the token)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyservice import token as tokens
from keyservice.channels import KeyService
from keyservice.journal import Journal
from keyservice.policy import Policy


@dataclass(frozen=True)
class Config:
    bank: str
    module: str
    token_label: str
    softhsm_conf: str | None
    host: str
    port: int

    @classmethod
    def load(cls, directory: Path) -> Config:
        raw = json.loads((directory / "config.json").read_text())
        return cls(
            bank=raw["bank"],
            module=raw["token"]["module"],
            token_label=raw["token"]["label"],
            softhsm_conf=raw["token"].get("softhsm_conf"),
            host=raw.get("host", "127.0.0.1"),
            port=int(raw.get("port", 8551)),
        )

    def save(self, directory: Path) -> None:
        body = {
            "bank": self.bank,
            "token": {"module": self.module, "label": self.token_label, "softhsm_conf": self.softhsm_conf},
            "host": self.host,
            "port": self.port,
        }
        (directory / "config.json").write_text(json.dumps(body, indent=2) + "\n")


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_tls_identity(common_name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[bytes, bytes]:
    """A self-signed P-256 certificate (PEM) and its key (PEM), with ``hosts`` as SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def certificate_sha256(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


def card_ca_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """The agency's card CA key from a PEM public key or certificate."""
    if b"CERTIFICATE" in pem:
        key: Any = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the card CA key must be an EC public key")
    return key


def init_directory(
    directory: Path,
    *,
    bank: str,
    aid_prefixes: list[bytes],
    card_ca_pem: bytes,
    platform_cert_pem: bytes,
    host: str = "127.0.0.1",
    port: int = 8551,
    own_softhsm: bool = True,
) -> Config:
    """``python -m keyservice init``. ``own_softhsm`` False puts the token in the SoftHSM2 the
    process already uses (``SOFTHSM2_CONF``; tests: one token directory per process)."""
    card_ca_public_key(card_ca_pem)  # refuse a bad anchor now rather than at the first open
    x509.load_pem_x509_certificate(platform_cert_pem)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if (directory / "config.json").exists():
        raise FileExistsError(f"{directory} is already a key service directory")
    pin = secrets.token_hex(16)
    _write_secret(directory / "pin", pin.encode())
    conf = tokens.write_softhsm_conf(directory) if own_softhsm else None
    label = f"bank-{bank}-{secrets.token_hex(3)}"
    tokens.init_token(label, pin, conf)
    config = Config(bank, tokens.find_module(), label, str(conf) if conf else None, host, port)
    config.save(directory)
    Policy(bank, aid_prefixes).save(directory / "policy.json")
    (directory / "card-ca.pem").write_bytes(card_ca_pem)
    (directory / "platform.pem").write_bytes(platform_cert_pem)
    (directory / "tls").mkdir(mode=0o700, exist_ok=True)
    cert, key = make_tls_identity(f"{bank} key service")
    (directory / "tls" / "cert.pem").write_bytes(cert)
    _write_secret(directory / "tls" / "key.pem", key)
    return config


def open_token(directory: Path, config: Config) -> tokens.BankToken:
    if config.softhsm_conf:
        os.environ["SOFTHSM2_CONF"] = config.softhsm_conf  # read once, at the library's C_Initialize
    pin = (directory / "pin").read_text().strip()
    return tokens.BankToken(config.module, config.token_label, pin)


def load_service(directory: Path) -> KeyService:
    config = Config.load(directory)
    return KeyService(
        Policy.load(directory / "policy.json"),
        open_token(directory, config),
        Journal(directory / "journal.jsonl"),
        card_ca_public_key((directory / "card-ca.pem").read_bytes()),
    )
