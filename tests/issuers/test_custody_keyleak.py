"""The suite-wide key leak scanner (tests/issuers/keyleak.py) finds keys in every form it claims."""

from __future__ import annotations

import base64
import json
import logging
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.issuers.keyleak import KeyLeakScanner, KeyRegistry, scan, session_scan_paused

KEY = bytes.fromhex("8A1F52C3D4E5F60718293A4B5C6D7E8F")


def registry_with(*keys: bytes) -> KeyRegistry:
    registry = KeyRegistry()
    for i, key in enumerate(keys):
        registry.add(key, f"key{i}")
    return registry


@pytest.mark.parametrize(
    "haystack",
    [
        KEY,
        b"prefix" + KEY + b"suffix",
        KEY.hex().encode(),
        KEY.hex().upper().encode(),
        b'{"enc": "' + KEY.hex().upper().encode() + b'"}',
        b"x" + b"a" + KEY.hex().encode() + b"b",  # odd offset inside a longer hex run
        b"00" * 5 + KEY.hex().encode() + b"ff" * 7,  # inside a longer hex run
        base64.b64encode(KEY),
        base64.b64encode(KEY).rstrip(b"="),
        base64.urlsafe_b64encode(b"\xfb\xff" + KEY),
        b"key=" + base64.b64encode(b"12" + KEY + b"3456"),
        json.dumps({"k": base64.b64encode(b"x" + KEY).decode()}).encode(),
    ],
)
def test_finds_key_in_any_form(haystack: bytes) -> None:
    assert scan([("here", haystack)], registry_with(KEY)) == ["key0 in here"]


def test_no_false_positives_and_low_entropy_keys_ignored() -> None:
    registry = registry_with(KEY, bytes(16), b"\x01" * 32)
    assert len(registry) == 1
    haystacks = [
        ("zeros", bytes(64) + b"00" * 64),
        ("random", os.urandom(4096)),
        ("hex", os.urandom(512).hex().encode()),
        ("kcv", b'{"kcv_enc": "' + KEY.hex().upper()[:6].encode() + b'"}'),
        ("partial", KEY[:15] + KEY[:15].hex().encode()),
    ]
    assert scan(haystacks, registry) == []


def test_private_key_parts_are_tracked() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    registry = KeyRegistry()
    registry.add_plaintext(der, "token key")
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    assert scan([("resp", scalar.hex().encode())], registry) == ["token key EC scalar in resp"]
    assert scan([("resp", base64.b64encode(der))], registry)
    static = KEY + bytes(range(100, 116)) + bytes(range(200, 216))
    registry.add_plaintext(static, "static")
    assert scan([("log", bytes(range(200, 216)).hex().encode())], registry) == ["static dek in log"]


@pytest.mark.django_db
def test_instrumentation_sees_keys_responses_logs_and_audit(client: object, software_backend: str) -> None:
    from django.db import transaction

    from audit.services import record_event
    from gp.keys import StaticKeys
    from issuers import custody
    from issuers.models import Organization

    scanner = KeyLeakScanner()
    with session_scan_paused():  # the leaks below are on purpose
        scanner.install()
        try:
            keys = StaticKeys(KEY, bytes(range(32, 48)), bytes(range(64, 80)), 0x30)  # registered on creation
            org = Organization.objects.create(name="Leak Org", slug="leak-org", kind="bank")
            master = bytes(range(1, 33))
            custody.store_master_key(org, master, 1)  # registered when custody wraps it
            logging.getLogger("tests.keyleak").warning("oops %s", master.hex())
            with transaction.atomic():
                record_event(action="test.leak", subject_type="x", subject_id=1, details={"k": keys.dek.hex()})
            client.get("/api/v1/", HTTP_X_PROBE=KEY.hex())  # type: ignore[attr-defined]
            scanner.pending.append(("fake response", base64.b64encode(keys.mac)))
            scanner.flush()
            leaks = "\n".join(scanner.leaks)
            assert "custody plaintext" in leaks and "log record tests.keyleak" in leaks
            assert "StaticKeys.dek" in leaks and "audit entry test.leak" in leaks
            assert "StaticKeys.mac (KVN 0x30) in fake response" in leaks
            assert KEY.hex() not in leaks.lower() and master.hex() not in leaks.lower()
            # custody's own audit events and the 404 page of the API carry no key
            assert not any("custody.key_stored" in leak or "response GET" in leak for leak in scanner.leaks)
        finally:
            scanner.uninstall()
