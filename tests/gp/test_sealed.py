"""gp.sealed: the envelope a bank's back office seals personalisation data in (issue 18)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gp import dap, sealed
from gp.errors import EncodingError, KeyMaterialError

CIN = bytes.fromhex("0A0B0C0D0E0F1011")
AID = bytes.fromhex("F0414C50480101")
DATA = bytes.fromhex("5A08") + b"12345678" + bytes.fromhex("9F1001") + b"\x07"


@pytest.fixture
def recipient() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return dap.public_point(key.public_key())


def test_an_envelope_opens_for_its_card_and_instance_only(recipient: ec.EllipticCurvePrivateKey) -> None:
    envelope = sealed.seal(point(recipient), DATA, cin=CIN, aid=AID)
    assert DATA not in envelope and b"12345678" not in envelope
    ecdh = sealed.software_ecdh(recipient)
    assert sealed.open_sealed(envelope, ecdh, cin=CIN, aid=AID) == DATA
    for cin, aid in ((bytes.fromhex("0A0B0C0D0E0F1012"), AID), (CIN, AID[:-1] + b"\x02"), (CIN + b"\x00", AID)):
        with pytest.raises(sealed.EnvelopeError, match="another card or instance"):
            sealed.open_sealed(envelope, ecdh, cin=cin, aid=aid)
    # Each envelope has its own ephemeral key.
    assert sealed.seal(point(recipient), DATA, cin=CIN, aid=AID)[5:70] != envelope[5:70]


def test_the_format_is_the_documented_one(recipient: ec.EllipticCurvePrivateKey) -> None:
    """Decrypt by hand from the format docs/keyservice.md gives, independently of open_sealed."""
    envelope = sealed.seal(point(recipient), DATA, cin=CIN, aid=AID)
    assert envelope[:4] == b"ECSD" and envelope[4] == 1 and len(envelope) == 4 + 1 + 65 + len(DATA) + 16
    ephemeral = envelope[5:70]
    shared = recipient.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ephemeral))
    okm = HKDF(hashes.SHA256(), 44, salt=ephemeral, info=b"ECSD v1 AES-256-GCM key and nonce").derive(shared)
    aad = b"ECSD\x01" + ephemeral + bytes((len(CIN),)) + CIN + bytes((len(AID),)) + AID
    assert AESGCM(okm[:32]).decrypt(okm[32:], envelope[70:], aad) == DATA


def test_an_altered_or_foreign_envelope_does_not_open(recipient: ec.EllipticCurvePrivateKey) -> None:
    envelope = sealed.seal(point(recipient), DATA, cin=CIN, aid=AID)
    ecdh = sealed.software_ecdh(recipient)
    for position in (6, 69, 70, len(envelope) - 1):  # the ephemeral key, the ciphertext, the tag
        altered = bytearray(envelope)
        altered[position] ^= 1
        with pytest.raises(sealed.EnvelopeError):
            sealed.open_sealed(bytes(altered), ecdh, cin=CIN, aid=AID)
    stranger = sealed.software_ecdh(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(sealed.EnvelopeError, match="another key"):
        sealed.open_sealed(envelope, stranger, cin=CIN, aid=AID)


def test_a_malformed_envelope_is_refused_before_any_key_agreement(recipient: ec.EllipticCurvePrivateKey) -> None:
    envelope = sealed.seal(point(recipient), DATA, cin=CIN, aid=AID)
    calls: list[bytes] = []

    def ecdh(peer: bytes) -> bytes:
        calls.append(peer)
        return sealed.software_ecdh(recipient)(peer)

    off_curve = envelope[:5] + b"\x04" + bytes(64) + envelope[70:]
    cases = {
        b"": "not a sealed envelope",
        envelope[:85]: "not a sealed envelope",
        b"XCSD" + envelope[4:]: "not a sealed envelope",
        envelope[:4] + b"\x02" + envelope[5:]: "version 2",
        off_curve: "not a point on P-256",
        envelope[:5] + b"\x02" + envelope[6:]: "uncompressed",
    }
    for bad, message in cases.items():
        with pytest.raises(sealed.EnvelopeError, match=message):
            sealed.open_sealed(bad, ecdh, cin=CIN, aid=AID)
    assert calls == []


def test_bad_keys_and_bindings_are_refused(recipient: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(KeyMaterialError):
        sealed.seal(b"\x04" + bytes(64), DATA, cin=CIN, aid=AID)
    with pytest.raises(KeyMaterialError):
        sealed.seal(point(recipient)[:33], DATA, cin=CIN, aid=AID)
    for cin, aid in ((b"", AID), (bytes(33), AID), (CIN, b"\xf0\x41"), (CIN, bytes(17))):
        with pytest.raises(EncodingError):
            sealed.seal(point(recipient), DATA, cin=cin, aid=aid)
        with pytest.raises(EncodingError):
            sealed.open_sealed(b"ECSD", sealed.software_ecdh(recipient), cin=cin, aid=aid)
