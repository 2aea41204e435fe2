"""Data Authentication Pattern (DAP) signatures over a Load File (GPC 2.3.1 §9.2.1, §C.2 and §C.5).

A Security Domain with the DAP Verification privilege checks, before a Load File is accepted,
the signature carried in the DAP block (``E2 { 4F <SD AID>, C3 <signature> }``, §11.6.2.3) that
precedes the Load File Data Block. What is signed is the *Load File Data Block Hash*, the hash
that INSTALL [for load] already carries (§11.5.2.3.2); the card recomputes that hash over the
LFDB it received and refuses the load if either check fails (the emulated card answers
``6982``, security status not satisfied).

This module fixes one scheme, the one this platform issues and its emulated card verifies:

* hash of the LFDB: SHA-256 (§C.2, Table C-1 allows SHA-256 for the LFDB hash);
* signature: ECDSA over NIST P-256 with SHA-256 on the LFDB hash bytes (the ECC DAP scheme of
  §C.5 / Amendment E), encoded as the plain concatenation ``r || s`` (64 bytes), not DER;
* verification key: an ECC public key (key type ``B0`` with parameter reference ``F0 00``,
  Amendment E) at key version :data:`DAP_KVN`, key identifier ``01``.

A bank's DAP key lives in the bank's key service (its PKCS#11 token signs with ``CKM_ECDSA_SHA256``,
which yields the same ``r || s``); the agency's Mandated DAP key lives in its custody.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gp.errors import EncodingError, KeyMaterialError
from gp.keys import encode_put_key_ec_p256

#: Key version number of a Security Domain's DAP verification key (GPC 2.3.1 §11.1.8: '73' is the
#: reserved KVN of the DAP key when the SD verifies DAP with a public key).
DAP_KVN = 0x73
#: Key identifier of the DAP verification key inside :data:`DAP_KVN`.
DAP_KEY_ID = 0x01
#: Length of an ``r || s`` P-256 signature.
SIGNATURE_LENGTH = 64

_CURVE = ec.SECP256R1()


def lfdb_hash(lfdb: bytes) -> bytes:
    """The Load File Data Block Hash (SHA-256, §C.2) that INSTALL [for load] and the DAP cover."""
    return hashlib.sha256(lfdb).digest()


def public_point(key: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed SEC 1 point ``04 || X || Y`` of a P-256 public key."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyMaterialError("a DAP key must be on NIST P-256")
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def load_public_point(point: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from its uncompressed point; :class:`KeyMaterialError` if it is not one."""
    if len(point) != 65 or point[0] != 0x04:
        raise KeyMaterialError("a DAP public key is a 65-byte uncompressed P-256 point (04 || X || Y)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, bytes(point))
    except ValueError as exc:
        raise KeyMaterialError("the DAP public key is not a point on P-256") from exc


def sign(private_key: ec.EllipticCurvePrivateKey, load_file_data_block_hash: bytes) -> bytes:
    """The DAP signature ``r || s`` over a Load File Data Block Hash (software key; tests, custody)."""
    if len(load_file_data_block_hash) != 32:
        raise KeyMaterialError("the Load File Data Block Hash is 32 bytes (SHA-256)")
    der = private_key.sign(bytes(load_file_data_block_hash), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(point: bytes, load_file_data_block_hash: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (``r || s``) is the DAP of the key ``point`` over that LFDB hash.

    A malformed signature is simply not valid; a malformed key raises :class:`KeyMaterialError`
    (the key is ours to have stored correctly, the signature is whoever sent it).
    """
    key = load_public_point(point)
    if len(signature) != SIGNATURE_LENGTH or len(load_file_data_block_hash) != 32:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if r <= 0 or s <= 0:
        return False
    try:
        key.verify(encode_dss_signature(r, s), bytes(load_file_data_block_hash), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def put_key_data(point: bytes) -> bytes:
    """PUT KEY data installing a DAP verification key at :data:`DAP_KVN` (Amendment E encoding)."""
    load_public_point(point)
    return encode_put_key_ec_p256(DAP_KVN, point)


def parse_signature(value: str | bytes) -> bytes:
    """A signature given as hex text or bytes, checked for length; :class:`EncodingError` if not."""
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value.strip())
        except ValueError as exc:
            raise EncodingError("a DAP signature is hex text") from exc
    else:
        raw = bytes(value)
    if len(raw) != SIGNATURE_LENGTH:
        raise EncodingError(f"a DAP signature is {SIGNATURE_LENGTH} bytes (r || s), not {len(raw)}")
    return raw
