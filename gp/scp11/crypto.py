"""SCP11 cryptography: ECKA (ECDH), the X9.63 key derivation, the receipt, and plain ECDSA.

* ECKA-EG / ECKA-DH per BSI TR-03111 §4.3.1 as Amd F §3.1 uses it: the shared secret is the
  x-coordinate of the product point, field-size bytes.
* Key derivation, Amd F §3.1.2 (v1.3) / §6.5.2 (v1.4): ANSI X9.63 KDF over ShS1 || ShS2 with
  SharedInfo = key usage || key type || key length; SHA-256 for keys on P-256, SHA-384 on P-384.
  The output is cut into five keys of the session key length: receipt key, S-ENC, S-MAC,
  S-RMAC, S-DEK (Amd F Table 6-18 "KeyData assignment").
* Receipt, Amd F §6.5.3 (Table 6-19): AES-CMAC with the receipt key over the CRT (tag A6) and
  ePK.OCE (tag 5F49) as sent, followed by the card's 5F49 object as answered. 16 bytes.
* Certificate signatures (Amd F §6.2 / GPC 2.3.1 §B.4.3): ECDSA with the hash of the curve, the
  signature as r || s, each as long as the order.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from gp.crypto import AESKey
from gp.errors import KeyMaterialError
from gp.scp11.errors import InvalidPointError

__all__ = [
    "Curve",
    "SessionKeys",
    "compute_receipt",
    "derive_session_keys",
    "ecdsa_sign",
    "ecdsa_verify",
    "ecka",
    "encode_point",
    "private_key",
    "public_key",
    "random_private_key",
    "receipt_matches",
    "x963_kdf",
]


class Curve(IntEnum):
    """Curves SCP11 uses here, valued by their key parameter reference (GPC 2.3.1 Table B-2,
    tag F0 of a 7F49 public key)."""

    P256 = 0x00
    P384 = 0x01

    @property
    def curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1() if self is Curve.P256 else ec.SECP384R1()

    @property
    def field_bytes(self) -> int:
        return 32 if self is Curve.P256 else 48

    @property
    def order(self) -> int:
        if self is Curve.P256:
            return 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        return int(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
        )

    @property
    def hash_name(self) -> str:
        """Hash of the KDF and of ECDSA on this curve (Amd F §6.5.2; GPC 2.3.1 Table B-3)."""
        return "sha256" if self is Curve.P256 else "sha384"

    def hash_algorithm(self) -> hashes.SHA256 | hashes.SHA384:
        return hashes.SHA256() if self is Curve.P256 else hashes.SHA384()

    @property
    def point_length(self) -> int:
        return 1 + 2 * self.field_bytes

    @classmethod
    def of_key(cls, key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> Curve:
        name = key.curve.name
        if name == "secp256r1":
            return cls.P256
        if name == "secp384r1":
            return cls.P384
        raise KeyMaterialError(f"curve {name} is not supported by SCP11 here (P-256, P-384)")

    @classmethod
    def of_point(cls, point: bytes) -> Curve:
        for curve in cls:
            if len(point) == curve.point_length:
                return curve
        raise InvalidPointError(f"a {len(point)}-byte point is not an uncompressed P-256 or P-384 point")


def public_key(curve: Curve, point: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of an uncompressed point (TR-03111 §3.2.1: 04 || X || Y) on ``curve``.

    Compressed points, the point at infinity and points off the curve are refused
    (:class:`InvalidPointError`): an off-curve point would leak SK.SD bits (invalid-curve attack).
    """
    point = bytes(point)
    if len(point) != curve.point_length or point[0] != 0x04:
        raise InvalidPointError(f"not an uncompressed {curve.name} point ({len(point)} bytes)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve.curve, point)
    except ValueError:
        raise InvalidPointError(f"point is not on {curve.name}") from None


def encode_point(key: ec.EllipticCurvePublicKey) -> bytes:
    """04 || X || Y, each coordinate field-size bytes (TR-03111 §3.2.1)."""
    curve = Curve.of_key(key)
    numbers = key.public_numbers()
    n = curve.field_bytes
    return b"\x04" + numbers.x.to_bytes(n, "big") + numbers.y.to_bytes(n, "big")


def private_key(curve: Curve, scalar: int) -> ec.EllipticCurvePrivateKey:
    """The private key with scalar ``scalar`` (1 <= scalar < order)."""
    if isinstance(scalar, bool) or not isinstance(scalar, int) or not 0 < scalar < curve.order:
        raise KeyMaterialError(f"private scalar out of range for {curve.name}")
    return ec.derive_private_key(scalar, curve.curve)


def random_private_key(curve: Curve, random: Callable[[int], bytes]) -> ec.EllipticCurvePrivateKey:
    """A private key from ``random`` (FIPS 186-5 A.2.2 rejection sampling: draw field-size bytes
    until the value is in 1..order-1)."""
    for _ in range(64):
        scalar = int.from_bytes(random(curve.field_bytes), "big")
        if 0 < scalar < curve.order:
            return private_key(curve, scalar)
    raise KeyMaterialError("random source gave no usable scalar in 64 draws")


def ecka(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    """ECKA-DH shared secret: x-coordinate of private x peer (TR-03111 §4.3.1)."""
    if private.curve.name != peer.curve.name:
        raise KeyMaterialError("ECKA keys on different curves")
    return private.exchange(ec.ECDH(), peer)


def x963_kdf(hash_name: str, shared_secret: bytes, shared_info: bytes, length: int) -> bytes:
    """ANSI X9.63 KDF (SEC 1 v2 §3.6.1): Hash(Z || counter32 || SharedInfo) for counter = 1, 2, ...
    concatenated and cut to ``length`` bytes."""
    if length <= 0:
        raise KeyMaterialError(f"X9.63 KDF length must be positive, got {length}")
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += hashlib.new(hash_name, shared_secret + counter.to_bytes(4, "big") + shared_info).digest()
        counter += 1
    return bytes(out[:length])


@dataclass(frozen=True, repr=False)
class SessionKeys:
    """The five keys of Amd F Table 6-18, in derivation order. ``repr`` hides them."""

    receipt_key: bytes
    s_enc: bytes
    s_mac: bytes
    s_rmac: bytes
    s_dek: bytes

    def __repr__(self) -> str:
        return f"SessionKeys(AES-{len(self.s_enc) * 8}, <hidden>)"


def derive_session_keys(curve: Curve, shared_secrets: bytes, shared_info: bytes, key_length: int) -> SessionKeys:
    """Amd F §6.5.2: X9.63 KDF (hash of the curve) over ShS1 || ShS2, five keys of ``key_length``."""
    if key_length not in (16, 24, 32):
        raise KeyMaterialError(f"AES session keys are 16, 24 or 32 bytes, not {key_length}")
    data = x963_kdf(curve.hash_name, shared_secrets, shared_info, 5 * key_length)
    parts = [data[i : i + key_length] for i in range(0, 5 * key_length, key_length)]
    return SessionKeys(*parts)


def compute_receipt(receipt_key: bytes, key_agreement_data: bytes) -> bytes:
    """Amd F §6.5.3: receipt = AES-CMAC(receipt key, key agreement data), 16 bytes."""
    return AESKey(receipt_key).cmac(key_agreement_data)


def receipt_matches(receipt_key: bytes, key_agreement_data: bytes, receipt: bytes) -> bool:
    """Constant-time check of a receipt."""
    return hmac.compare_digest(compute_receipt(receipt_key, key_agreement_data), bytes(receipt))


def ecdsa_sign(private: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """Plain ECDSA signature r || s with the curve's hash (GPC 2.3.1 §B.4.3)."""
    curve = Curve.of_key(private)
    r, s = decode_dss_signature(private.sign(data, ec.ECDSA(curve.hash_algorithm())))
    n = (curve.order.bit_length() + 7) // 8
    return r.to_bytes(n, "big") + s.to_bytes(n, "big")


def ecdsa_verify(public: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    """Check a plain r || s signature; False on any mismatch or malformed length."""
    curve = Curve.of_key(public)
    n = (curve.order.bit_length() + 7) // 8
    if len(signature) != 2 * n:
        return False
    r, s = int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big")
    if not (0 < r < curve.order and 0 < s < curve.order):
        return False
    try:
        public.verify(encode_dss_signature(r, s), data, ec.ECDSA(curve.hash_algorithm()))
    except InvalidSignature:
        return False
    return True
