"""Sealed personalisation data: an ECIES-style envelope (issue 18, docs/keyservice.md).

A bank's back office seals each card's data for one applet instance to the bank's
personalisation key (a P-256 key pair in the bank's key service token). The platform stores and
relays the envelope but cannot read it; only the bank's service opens it, in its token, and
sends the data to the card inside the bank's secure channel (STORE DATA with C-DEC).

Envelope (all lengths in bytes)::

    offset  length  field
    0       4       magic  "ECSD"
    4       1       version 01
    5       65      E: the sender's ephemeral P-256 public key, uncompressed (04 || X || Y)
    70      n + 16  AES-256-GCM ciphertext of the n plaintext bytes, then its 16-byte tag

* Z = ECDH(d_recipient, E) (SEC 1 §3.3.1: the x coordinate, 32 bytes).
* key (32) || nonce (12) = HKDF-SHA256(IKM = Z, salt = E, info = ``INFO``, L = 44) (RFC 5869).
  E is fresh for every envelope, so each key encrypts one message: a derived nonce is safe.
* AAD = magic || version || E || len(CIN) || CIN || len(AID) || AID (lengths one byte each):
  an envelope sealed for one card and instance does not open for another.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gp.errors import EncodingError, KeyMaterialError

MAGIC = b"ECSD"
VERSION = 1
INFO = b"ECSD v1 AES-256-GCM key and nonce"
POINT_LENGTH = 65
TAG_LENGTH = 16
HEADER_LENGTH = len(MAGIC) + 1 + POINT_LENGTH
MIN_LENGTH = HEADER_LENGTH + TAG_LENGTH
MAX_CIN_LENGTH = 32
MIN_AID_LENGTH, MAX_AID_LENGTH = 5, 16  # ISO 7816-5 AID: RID (5) + PIX (up to 11)

#: ECDH with the recipient's private key: the peer's uncompressed point in, Z (32 bytes) out.
ECDH = Callable[[bytes], bytes]

_CURVE = ec.SECP256R1()


class EnvelopeError(EncodingError):
    """An envelope that does not open: malformed, another version, altered, sealed to another
    key, or for another card or instance. The message never says which secret failed how."""


def _point_key(point: bytes, what: str) -> ec.EllipticCurvePublicKey:
    if len(point) != POINT_LENGTH or point[:1] != b"\x04":
        raise KeyMaterialError(f"{what} is a 65-byte uncompressed P-256 point (04 || X || Y)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, bytes(point))
    except ValueError:
        raise KeyMaterialError(f"{what} is not a point on P-256") from None


def _binding(cin: bytes, aid: bytes) -> bytes:
    if not 1 <= len(cin) <= MAX_CIN_LENGTH:
        raise EncodingError(f"the CIN must be 1..{MAX_CIN_LENGTH} bytes, got {len(cin)}")
    if not MIN_AID_LENGTH <= len(aid) <= MAX_AID_LENGTH:
        raise EncodingError(f"the instance AID must be {MIN_AID_LENGTH}..{MAX_AID_LENGTH} bytes, got {len(aid)}")
    return bytes((len(cin),)) + bytes(cin) + bytes((len(aid),)) + bytes(aid)


def _key_and_nonce(shared: bytes, ephemeral: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=ephemeral, info=INFO).derive(shared)
    return okm[:32], okm[32:]


def seal(recipient_point: bytes, plaintext: bytes, *, cin: bytes, aid: bytes) -> bytes:
    """The envelope of ``plaintext`` for the holder of ``recipient_point``'s private key, bound
    to card ``cin`` and instance ``aid``."""
    recipient = _point_key(recipient_point, "the recipient key")
    binding = _binding(cin, aid)
    ephemeral_key = ec.generate_private_key(_CURVE)
    ephemeral = ephemeral_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    key, nonce = _key_and_nonce(ephemeral_key.exchange(ec.ECDH(), recipient), ephemeral)
    header = MAGIC + bytes((VERSION,)) + ephemeral
    return header + AESGCM(key).encrypt(nonce, bytes(plaintext), header + binding)


def open_sealed(envelope: bytes, ecdh: ECDH, *, cin: bytes, aid: bytes) -> bytes:
    """The plaintext of ``envelope`` for card ``cin`` and instance ``aid``; ``ecdh`` does the
    key agreement with the recipient's private key (in the bank's token). :class:`EnvelopeError`
    when it does not open."""
    binding = _binding(cin, aid)
    envelope = bytes(envelope)
    if len(envelope) < MIN_LENGTH or envelope[:4] != MAGIC:
        raise EnvelopeError("not a sealed envelope (ECSD)")
    if envelope[4] != VERSION:
        raise EnvelopeError(f"sealed envelope version {envelope[4]} (this reader knows {VERSION})")
    ephemeral = envelope[5:HEADER_LENGTH]
    try:
        _point_key(ephemeral, "the ephemeral key")  # never hand the token a point off the curve
    except KeyMaterialError as exc:
        raise EnvelopeError(f"sealed envelope: {exc}") from None
    key, nonce = _key_and_nonce(ecdh(ephemeral), ephemeral)
    try:
        return AESGCM(key).decrypt(nonce, envelope[HEADER_LENGTH:], envelope[:HEADER_LENGTH] + binding)
    except InvalidTag:
        raise EnvelopeError(
            "the sealed data does not open: altered, sealed to another key, or for another card or instance"
        ) from None


def plaintext_length(envelope: bytes) -> int:
    """How many bytes ``envelope`` seals, read off its shape alone (AES-GCM adds only its tag);
    :class:`EnvelopeError` when it is not an envelope of this version. Nothing is opened."""
    envelope = bytes(envelope)
    if len(envelope) < MIN_LENGTH or envelope[:4] != MAGIC:
        raise EnvelopeError("not a sealed envelope (ECSD)")
    if envelope[4] != VERSION:
        raise EnvelopeError(f"sealed envelope version {envelope[4]} (this reader knows {VERSION})")
    try:
        _point_key(envelope[5:HEADER_LENGTH], "the ephemeral key")
    except KeyMaterialError as exc:
        raise EnvelopeError(f"sealed envelope: {exc}") from None
    return len(envelope) - MIN_LENGTH


def software_ecdh(private_key: ec.EllipticCurvePrivateKey) -> ECDH:
    """An :data:`ECDH` with a software key (tests, a back office without a token)."""

    def exchange(peer_point: bytes) -> bytes:
        return private_key.exchange(ec.ECDH(), _point_key(peer_point, "the peer key"))

    return exchange
