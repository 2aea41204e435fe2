"""Key sets (DESIGN §7): wrapping under the owner's KEK, storing into a slot, loading clear material.

The associated data binds a blob to its owner, card CIN, SD AID, KVN, purpose, algorithm and KEK
version (docs/key-custody.md, "What is stored"). ``load_*`` return clear key material: for the
secure-channel and signing code in services and tasks only.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.db import transaction
from django.utils import timezone

from audit.services import record_event
from ecard.bulk import insert_rows
from ecard.errors import ServiceError
from gp.keys import StaticKeys, kcv_aes, kcv_des
from issuers.custody.kek import ensure_org_kek
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.keyvault import CustodyError, KekUnavailableError, UnwrapError, encode_aad, get_backend
from issuers.models import Organization

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

Purpose = KeySet.Purpose
Algorithm = KeySet.Algorithm

_SYMMETRIC = {Algorithm.AES, Algorithm.DES3}
_ASYMMETRIC = {Algorithm.EC_P256, Algorithm.RSA, Algorithm.ED25519}
_ALLOWED: dict[str, set[Algorithm]] = {
    Purpose.SCP_STATIC: _SYMMETRIC,
    Purpose.DIVERSIFICATION_MASTER: _SYMMETRIC,
    Purpose.TOKEN_SIGNING: {Algorithm.EC_P256, Algorithm.RSA},
    Purpose.CHECKPOINT_SIGNING: {Algorithm.ED25519},
    Purpose.CARD_CA: {Algorithm.EC_P256},
    Purpose.OCE_CA: {Algorithm.EC_P256},
    Purpose.MANDATED_DAP: {Algorithm.EC_P256},
    Purpose.RECEIPT: _SYMMETRIC | _ASYMMETRIC,
    Purpose.TRANSPORT: {Algorithm.AES},  # AES Key Wrap (RFC 3394) of a manufacturer's file
}
_HEX_AID = re.compile(r"^(?:[0-9A-F]{2}){5,16}$")
_AAD_LABEL = "ecard-keyset"
_AAD_VERSION = 1


# ---------------------------------------------------------------------------
# wrapping


def _aad(keyset: KeySet, kek_version: int) -> bytes:
    return encode_aad(
        _AAD_LABEL,
        _AAD_VERSION,
        keyset.organization_id,
        keyset.card_cin,
        keyset.sd_aid,
        keyset.kvn,
        keyset.purpose,
        keyset.algorithm,
        kek_version,
    )


def _wrap(keyset: KeySet, kek: KeyEncryptionKey, plaintext: bytes) -> None:
    if kek.organization_id != keyset.organization_id:
        raise CustodyError("a key is only ever wrapped under its owner's KEK")
    if kek.state != KeyEncryptionKey.State.ACTIVE:
        raise KekUnavailableError(f"{kek.ref!r} is {kek.state}")
    keyset.wrapped = get_backend(kek.backend).wrap(kek.ref, plaintext, _aad(keyset, kek.version))
    keyset.kek = kek


def _unwrap_with(keyset: KeySet, kek: KeyEncryptionKey) -> bytes:
    if kek.state == KeyEncryptionKey.State.DESTROYED:
        raise KekUnavailableError(f"{kek.ref!r} is destroyed")
    return get_backend(kek.backend).unwrap(kek.ref, bytes(keyset.wrapped), _aad(keyset, kek.version))


def _unwrap(keyset: KeySet) -> bytes:
    """Clear key material of ``keyset``.

    A reader that fetched the row just before a KEK rotation committed finds its KEK destroyed;
    it re-reads the row (now wrapped under the new KEK) and tries once more — no downtime.
    """
    kek = KeyEncryptionKey.objects.get(pk=keyset.kek_id)
    try:
        return _unwrap_with(keyset, kek)
    except CustodyError:
        fresh = KeySet.objects.filter(pk=keyset.pk).first() if keyset.pk else None
        if fresh is None or fresh.kek_id == keyset.kek_id:
            raise
        keyset.wrapped, keyset.kek_id = fresh.wrapped, fresh.kek_id
        return _unwrap_with(keyset, KeyEncryptionKey.objects.get(pk=fresh.kek_id))


# ---------------------------------------------------------------------------
# storing


def _check_slot(purpose: str, algorithm: str, kvn: int, card_cin: str, sd_aid: str) -> str:
    if purpose not in _ALLOWED:
        raise ServiceError(f"unknown key purpose {purpose!r}", field="purpose")
    if algorithm not in _ALLOWED[purpose]:
        raise ServiceError(f"algorithm {algorithm!r} is not allowed for {purpose} keys", field="algorithm")
    if not isinstance(kvn, int) or not 0 <= kvn <= 0xFF:
        raise ServiceError("KVN must be 0..255", field="kvn")
    if len(card_cin) > 64:
        raise ServiceError("card CIN too long", field="card_cin")
    sd_aid = sd_aid.upper()
    if sd_aid and not _HEX_AID.match(sd_aid):
        raise ServiceError("SD AID must be 5 to 16 bytes of hex", field="sd_aid")
    return sd_aid


def _store(
    org: Organization,
    plaintext: bytes,
    *,
    purpose: str,
    algorithm: str,
    key_length: int,
    kvn: int,
    card_cin: str,
    sd_aid: str,
    kcvs: dict[str, str] | None = None,
    public_key: str = "",
    actor: Any = None,
    action: str = "custody.key_stored",
) -> KeySet:
    sd_aid = _check_slot(purpose, algorithm, kvn, card_cin, sd_aid)
    kcvs = kcvs or {}
    with transaction.atomic():
        kek = ensure_org_kek(org, actor=actor)
        kek = KeyEncryptionKey.objects.select_for_update().get(pk=kek.pk)
        if kek.state != KeyEncryptionKey.State.ACTIVE:  # rotated meanwhile
            kek = KeyEncryptionKey.objects.get(organization=org, state=KeyEncryptionKey.State.ACTIVE)
        now = timezone.now()
        previous = list(
            KeySet.objects.select_for_update().filter(
                organization=org,
                card_cin=card_cin,
                sd_aid=sd_aid,
                kvn=kvn,
                purpose=purpose,
                state=KeySet.State.ACTIVE,
            )
        )
        for old in previous:
            old.state = KeySet.State.SUPERSEDED
            old.rotated_at = now
            old.save(update_fields=["state", "rotated_at"])
        keyset = KeySet(
            organization=org,
            card_cin=card_cin,
            sd_aid=sd_aid,
            kvn=kvn,
            purpose=purpose,
            algorithm=algorithm,
            key_length=key_length,
            kcv_enc=kcvs.get("enc", ""),
            kcv_mac=kcvs.get("mac", ""),
            kcv_dek=kcvs.get("dek", ""),
            public_key=public_key,
        )
        _wrap(keyset, kek, plaintext)
        keyset.save()
        record_event(
            action=action,
            subject_type="key_set",
            subject_id=keyset.pk,
            actor=actor,
            organization=org,
            card_cin=card_cin,
            details={
                "purpose": purpose,
                "algorithm": algorithm,
                "key_length": key_length,
                "kvn": kvn,
                "key_version": kvn,
                "sd_aid": sd_aid,
                "kek_version": kek.version,
                "superseded": [old.pk for old in previous],
            },
        )
    return keyset


@dataclass(frozen=True)
class NewKey:
    """One symmetric key (or ENC‖MAC‖DEK set) for :func:`store_new_keys`. Holds clear key material."""

    material: bytes = field(repr=False)
    purpose: str
    algorithm: Literal["aes", "3des"]
    key_length: int
    kvn: int
    card_cin: str
    sd_aid: str = ""
    kcvs: dict[str, str] = field(default_factory=dict)


def store_new_keys(
    org: Organization, keys: list[NewKey], *, actor: Any = None, details: dict[str, Any] | None = None
) -> int:
    """Store many symmetric keys into empty slots at once (a manufacturer file's cards): wrapped
    under the organisation's active KEK with the KEK opened once, inserted in bulk, with ONE audit
    entry (``custody.keys_stored``: counts by purpose, the KEK version and ``details``).

    For cards new to custody only, and unlike the one-key functions it never supersedes: a card
    that already has an active key set here is refused (``ServiceError``, code ``duplicate``).
    Runs in the caller's transaction; returns the number of key sets stored.
    """
    if not keys:
        return 0
    for key in keys:
        _check_slot(key.purpose, key.algorithm, key.kvn, key.card_cin, key.sd_aid)
        if key.sd_aid != key.sd_aid.upper():
            raise ServiceError("SD AIDs are upper-case hex", field="sd_aid")
        per_key = 3 if key.purpose == Purpose.SCP_STATIC else 1
        if not _symmetric_length_ok(key.algorithm, key.key_length) or len(key.material) != per_key * key.key_length:
            raise ServiceError(f"{key.algorithm} keys cannot be {key.key_length} bytes", field="keys")
    with transaction.atomic():
        kek = ensure_org_kek(org, actor=actor)
        kek = KeyEncryptionKey.objects.select_for_update().get(pk=kek.pk)
        if kek.state != KeyEncryptionKey.State.ACTIVE:  # rotated meanwhile
            kek = KeyEncryptionKey.objects.get(organization=org, state=KeyEncryptionKey.State.ACTIVE)
        cins = sorted({key.card_cin for key in keys})
        taken: set[str] = set()
        for start in range(0, len(cins), 500):
            taken.update(
                KeySet.objects.filter(
                    organization=org, card_cin__in=cins[start : start + 500], state=KeySet.State.ACTIVE
                ).values_list("card_cin", flat=True)
            )
        slots = {(k.card_cin, k.sd_aid, k.kvn, k.purpose) for k in keys}
        if len(slots) != len(keys):
            raise ServiceError("two keys for the same slot", field="keys", code="duplicate")
        for key in keys:
            if key.card_cin in taken:
                raise ServiceError(
                    f"custody already holds keys for card {key.card_cin}", field="card_cin", code="duplicate"
                )
        rows = [
            KeySet(
                organization=org,
                card_cin=key.card_cin,
                sd_aid=key.sd_aid,
                kvn=key.kvn,
                purpose=key.purpose,
                algorithm=key.algorithm,
                key_length=key.key_length,
                kcv_enc=key.kcvs.get("enc", ""),
                kcv_mac=key.kcvs.get("mac", ""),
                kcv_dek=key.kcvs.get("dek", ""),
                kek=kek,
            )
            for key in keys
        ]
        blobs = get_backend(kek.backend).wrap_many(
            kek.ref, [(key.material, _aad(row, kek.version)) for key, row in zip(keys, rows, strict=True)]
        )
        for row, blob in zip(rows, blobs, strict=True):
            row.wrapped = blob
        insert_rows(KeySet, rows)
        record_event(
            action="custody.keys_stored",
            subject_type="organization",
            subject_id=org.slug,
            actor=actor,
            organization=org,
            details={
                "count": len(rows),
                "purposes": dict(sorted(Counter(str(key.purpose) for key in keys).items())),
                "kek_version": kek.version,
                **(details or {}),
            },
        )
    return len(rows)


def _symmetric_length_ok(algorithm: str, length: int) -> bool:
    return length in ((16, 24, 32) if algorithm == Algorithm.AES else (16,))


def _kcv(algorithm: str, key: bytes) -> str:
    return (kcv_aes(key) if algorithm == Algorithm.AES else kcv_des(key)).hex().upper()


def store_static_keys(
    org: Organization,
    keys: StaticKeys,
    *,
    card_cin: str = "",
    sd_aid: str = "",
    purpose: str = Purpose.SCP_STATIC,
    algorithm: Literal["aes", "3des"] = "aes",
    actor: Any = None,
) -> KeySet:
    """Store a static ENC/MAC/DEK key set (KVN = ``keys.version``) wrapped; replaces the slot's active set.

    ``algorithm`` says how the card uses 16-byte keys (AES-128 for SCP03, 3DES for SCP02).
    """
    if not isinstance(keys, StaticKeys):
        raise ServiceError("keys must be a gp.keys.StaticKeys", field="keys")
    if not _symmetric_length_ok(algorithm, keys.key_length):
        raise ServiceError(f"{algorithm} keys cannot be {keys.key_length} bytes", field="keys")
    kcvs = {name: _kcv(algorithm, getattr(keys, name)) for name in ("enc", "mac", "dek")}
    return _store(
        org,
        keys.enc + keys.mac + keys.dek,
        purpose=purpose,
        algorithm=algorithm,
        key_length=keys.key_length,
        kvn=keys.version,
        card_cin=card_cin,
        sd_aid=sd_aid,
        kcvs=kcvs,
        actor=actor,
    )


def generate_static_keys(
    org: Organization,
    *,
    algorithm: Literal["aes", "3des"] = "aes",
    length: int = 16,
    kvn: int,
    card_cin: str = "",
    sd_aid: str = "",
    purpose: str = Purpose.SCP_STATIC,
    actor: Any = None,
) -> KeySet:
    """Random ENC/MAC/DEK keys, stored wrapped. Returns the :class:`KeySet` only, never the keys."""
    if not _symmetric_length_ok(algorithm, length):
        raise ServiceError(f"{algorithm} keys cannot be {length} bytes", field="length")
    _check_slot(purpose, algorithm, kvn, card_cin, sd_aid)
    keys = StaticKeys(secrets.token_bytes(length), secrets.token_bytes(length), secrets.token_bytes(length), kvn)
    keyset = store_static_keys(
        org, keys, card_cin=card_cin, sd_aid=sd_aid, purpose=purpose, algorithm=algorithm, actor=actor
    )
    del keys
    return keyset


def store_secret_key(
    org: Organization,
    key: bytes,
    *,
    purpose: str,
    kvn: int,
    algorithm: Literal["aes", "3des"] = "aes",
    card_cin: str = "",
    sd_aid: str = "",
    actor: Any = None,
) -> KeySet:
    """Store one symmetric key (diversification master, receipt key) wrapped; its KCV goes in ``kcv_enc``."""
    key = bytes(key)
    if not _symmetric_length_ok(algorithm, len(key)):
        raise ServiceError(f"{algorithm} keys cannot be {len(key)} bytes", field="key")
    return _store(
        org,
        key,
        purpose=purpose,
        algorithm=algorithm,
        key_length=len(key),
        kvn=kvn,
        card_cin=card_cin,
        sd_aid=sd_aid,
        kcvs={"enc": _kcv(algorithm, key)},
        actor=actor,
    )


def store_master_key(
    org: Organization,
    master: bytes,
    kvn: int,
    purpose: str = Purpose.DIVERSIFICATION_MASTER,
    *,
    algorithm: Literal["aes", "3des"] = "aes",
    actor: Any = None,
) -> KeySet:
    """Store a diversification master key (AES for ``kdf3``, 16-byte 3DES for ``emv``/``visa2``)."""
    return store_secret_key(org, master, purpose=purpose, kvn=kvn, algorithm=algorithm, actor=actor)


def _algorithm_of(private_key: PrivateKey) -> tuple[str, int]:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ServiceError("only NIST P-256 EC keys are supported", field="private_key")
        return Algorithm.EC_P256, 32
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < 2048:
            raise ServiceError("RSA keys must be at least 2048 bits", field="private_key")
        return Algorithm.RSA, private_key.key_size // 8
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return Algorithm.ED25519, 32
    raise ServiceError("unsupported private key type", field="private_key")


def store_private_key(
    org: Organization,
    private_key: PrivateKey,
    *,
    purpose: str = Purpose.TOKEN_SIGNING,
    kvn: int,
    card_cin: str = "",
    sd_aid: str = "",
    actor: Any = None,
) -> KeySet:
    """Store a signing key (EC P-256 / RSA for tokens, Ed25519 for checkpoints) wrapped; public key as PEM."""
    algorithm, length = _algorithm_of(private_key)
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return _store(
        org,
        der,
        purpose=purpose,
        algorithm=algorithm,
        key_length=length,
        kvn=kvn,
        card_cin=card_cin,
        sd_aid=sd_aid,
        public_key=public_pem,
        actor=actor,
    )


def generate_private_key(
    org: Organization,
    *,
    purpose: str,
    algorithm: Literal["ec-p256", "rsa", "ed25519"],
    kvn: int,
    rsa_bits: int = 2048,
    card_cin: str = "",
    sd_aid: str = "",
    actor: Any = None,
) -> KeySet:
    """A fresh signing key pair; the private key is stored wrapped, the KeySet (with public key) returned."""
    private_key: PrivateKey
    if algorithm == Algorithm.EC_P256:
        private_key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == Algorithm.RSA:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    elif algorithm == Algorithm.ED25519:
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ServiceError(f"unknown asymmetric algorithm {algorithm!r}", field="algorithm")
    return store_private_key(org, private_key, purpose=purpose, kvn=kvn, card_cin=card_cin, sd_aid=sd_aid, actor=actor)


# ---------------------------------------------------------------------------
# loading — secure-channel / signing code in services and tasks ONLY


def load_static_keys(keyset: KeySet) -> StaticKeys:
    """The clear ENC/MAC/DEK of an ``scp_static`` key set, for opening a secure channel.

    Only for secure-channel code in services and tasks. Never call it from views, serializers,
    admin or anything that logs, renders or returns data: the result is clear key material
    (its ``repr`` hides the keys, its attributes do not).
    """
    if keyset.algorithm not in _SYMMETRIC or keyset.purpose == Purpose.DIVERSIFICATION_MASTER:
        raise CustodyError(f"{keyset!r} is not a static key set")
    blob = _unwrap(keyset)
    n = keyset.key_length
    if len(blob) != 3 * n:
        raise UnwrapError(f"{keyset!r}: unwrapped key set has the wrong length")
    return StaticKeys(blob[:n], blob[n : 2 * n], blob[2 * n :], keyset.kvn)


def load_secret_key(keyset: KeySet) -> bytes:
    """The clear single symmetric key of a master/receipt key set (services and tasks only)."""
    if keyset.algorithm not in _SYMMETRIC or keyset.purpose == Purpose.SCP_STATIC:
        raise CustodyError(f"{keyset!r} is not a single symmetric key")
    key = _unwrap(keyset)
    if len(key) != keyset.key_length:
        raise UnwrapError(f"{keyset!r}: unwrapped key has the wrong length")
    return key


def load_private_key(keyset: KeySet) -> PrivateKey:
    """The private signing key of an asymmetric key set (token / checkpoint signing code only)."""
    if keyset.algorithm not in _ASYMMETRIC:
        raise CustodyError(f"{keyset!r} is not an asymmetric key")
    der = _unwrap(keyset)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError:
        raise UnwrapError(f"{keyset!r}: unwrapped private key does not parse") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise UnwrapError(f"{keyset!r}: unexpected private key type")
    return key
