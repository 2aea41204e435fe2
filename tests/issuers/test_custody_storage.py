"""No key appears in clear in the database, the audit log or the log records.

The test creates keys of every kind through custody (and rotates a KEK), collects every secret
it knows — static ENC/MAC/DEK keys, diversification masters, private keys (PKCS#8 DER and raw),
the software KEKs themselves and the master key — then dumps every table with raw SQL and searches
each secret as raw bytes, upper- and lower-case hex and base64 (standard and URL-safe, padded or not).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import connection

from gp.keys import StaticKeys
from issuers import custody, keyvault
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.models import Organization
from tests.issuers.conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.django_db


def forms(secret: bytes) -> Iterator[bytes]:
    """Every textual form a key could take in a cell."""
    yield secret
    yield secret.hex().encode()
    yield secret.hex().upper().encode()
    for encoded in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        yield encoded
        yield encoded.rstrip(b"=")


def dump_database() -> list[tuple[str, bytes]]:
    """(table, row bytes) for every row of every table, read with raw SQL."""
    rows: list[tuple[str, bytes]] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - introspected names
            for row in cursor.fetchall():
                cells: list[bytes] = []
                for value in row:
                    if isinstance(value, memoryview | bytes | bytearray):
                        raw = bytes(value)
                        cells += [raw, raw.hex().encode()]
                    elif value is None:
                        cells.append(b"")
                    else:
                        cells.append(str(value).encode("utf-8", "surrogatepass"))
                rows.append((table, b"\x00|\x00".join(cells)))
    return rows


def find_secrets(haystacks: Iterable[tuple[str, bytes]], secrets: dict[str, bytes]) -> list[str]:
    found = []
    for where, blob in haystacks:
        for name, secret in secrets.items():
            for form in forms(secret):
                if form in blob:
                    found.append(f"{name} in {where}")
    return found


def _software_keks(master: bytes) -> dict[str, bytes]:
    """The clear software KEKs (the test opens them with the master key, as an attacker would)."""
    out = {}
    for kek in KeyEncryptionKey.objects.filter(backend="software").exclude(state="destroyed"):
        material = bytes(kek.wrapped_material)
        clear = AESGCM(master).decrypt(
            material[1:13], material[13:], keyvault.SoftwareBackend._kek_aad(kek.organization_id, kek.version)
        )
        out[f"KEK {kek.organization_id}/v{kek.version}"] = clear
    return out


def test_no_key_in_clear_in_database_audit_or_logs(
    key_backend: str, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any
) -> None:
    agency = Organization.objects.create(name="Scan Agency", slug="scan-agency", kind="agency")
    bank = Organization.objects.create(name="Scan Bank", slug="scan-bank", kind="bank")
    secrets: dict[str, bytes] = {}
    caplog.set_level(logging.DEBUG)

    known = StaticKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)), 0x30)
    custody.store_static_keys(bank, known, card_cin="CIN-S1", sd_aid="A000000999015344")
    for n, length in enumerate((16, 24, 32)):
        keyset = custody.generate_static_keys(bank, length=length, kvn=0x31, card_cin=f"CIN-S{n}")
        loaded = custody.load_static_keys(keyset)
        secrets |= {f"generated {n} {name}": getattr(loaded, name) for name in ("enc", "mac", "dek")}
    des = custody.generate_static_keys(bank, algorithm="3des", length=16, kvn=0x20, card_cin="CIN-D")
    secrets |= {f"3des {name}": getattr(custody.load_static_keys(des), name) for name in ("enc", "mac", "dek")}
    secrets |= {f"known {name}": getattr(known, name) for name in ("enc", "mac", "dek")}
    secrets["known enc||mac||dek"] = known.enc + known.mac + known.dek

    aes_master = bytes.fromhex("8899AABBCCDDEEFF0011223344556677")
    des_master = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    custody.store_master_key(agency, aes_master, 0x30)
    custody.store_master_key(agency, des_master, 0x20, algorithm="3des")
    secrets |= {"aes master": aes_master, "3des master": des_master}
    isd = custody.card_isd_keys(agency, "CIN-S1", bytes(10))
    secrets |= {f"isd {name}": getattr(isd, name) for name in ("enc", "mac", "dek")}

    private_keys: list[Any] = [
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ]
    for i, key in enumerate(private_keys):
        custody.store_private_key(agency, key, purpose="token_signing", kvn=0x70 + i)
    ed = ed25519.Ed25519PrivateKey.generate()
    custody.store_private_key(agency, ed, purpose="checkpoint_signing", kvn=1)
    generated = custody.generate_private_key(bank, purpose="receipt", algorithm="ec-p256", kvn=2)
    loaded_private = custody.load_private_key(generated)
    assert isinstance(loaded_private, ec.EllipticCurvePrivateKey)
    private_keys.append(loaded_private)
    for i, key in enumerate([*private_keys, ed]):
        secrets[f"private {i} pkcs8"] = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        secrets[f"private {i} pem body"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).split(b"\n")[1]
    ed_raw = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    secrets["ed25519 raw"] = ed_raw
    for i, key in enumerate(private_keys):
        if isinstance(key, ec.EllipticCurvePrivateKey):
            secrets[f"private {i} scalar"] = key.private_numbers().private_value.to_bytes(32, "big")
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.private_numbers()
            secrets[f"private {i} d"] = numbers.d.to_bytes(256, "big")
            secrets[f"private {i} p"] = numbers.p.to_bytes(128, "big")

    with django_capture_on_commit_callbacks(execute=True):
        custody.rotate_kek(bank)
    secrets |= _software_keks(TEST_MASTER_KEY)
    secrets["master key"] = TEST_MASTER_KEY
    assert KeySet.objects.count() == 11

    dump = dump_database()
    tables = {table for table, _ in dump}
    assert {"issuers_keyset", "issuers_keyencryptionkey", "audit_auditentry"} <= tables
    # the dump does see what custody stored (sanity check of the search itself)
    wrapped = bytes(KeySet.objects.first().wrapped)
    assert find_secrets(dump, {"a wrapped blob": wrapped})
    assert find_secrets(dump, secrets) == []

    logs = [(f"log {r.name}", r.getMessage().encode("utf-8", "surrogatepass")) for r in caplog.records]
    assert find_secrets(logs, secrets) == []
