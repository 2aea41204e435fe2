"""Key custody services (DESIGN §7): keys are stored wrapped under a per-organisation KEK.

* Every key is stored only wrapped (AES-GCM) under its owner organisation's active
  :class:`~issuers.custody_models.KeyEncryptionKey`; the associated data binds the blob to its owner
  organisation, card CIN, security domain AID, KVN, purpose, algorithm and KEK version, so a blob
  copied into another row does not unwrap.
* The KEK lives in the backend chosen by ``ECARD_KEY_BACKEND`` (:mod:`issuers.keyvault`).
* ``load_*`` functions return clear key material. They exist for the secure-channel code in
  services and tasks only (:mod:`gp.scp` sessions, token signing, checkpoint signing) and must never
  be called from views, serializers, admin pages or anything that logs or renders: API and admin
  show :class:`KeySet` metadata (KVN, algorithm, length, KCVs, public key, dates) and nothing else.
* Card ISD keys are diversified on demand from the agency's master (:func:`card_isd_keys`); the
  diversified keys are never stored.
* :func:`rotate_kek` re-wraps every key of an organisation under a new KEK in one transaction
  and destroys the old KEK; readers keep working throughout.

Every state change writes an audit event in the same transaction, with metadata only (no key
bytes, and no KCVs either).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from audit.services import record_event
from ecard.errors import ServiceError
from gp.keys import StaticKeys, diversify, kcv_aes, kcv_des
from gp.scp import SCP02, SCP03
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.keyvault import (
    BACKEND_PKCS11,
    CustodyError,
    KekBackend,
    KekRef,
    KekUnavailableError,
    UnwrapError,
    encode_aad,
    get_backend,
)
from issuers.models import Organization

logger = logging.getLogger(__name__)

__all__ = [
    "CustodyError",
    "KekUnavailableError",
    "PrivateKey",
    "UnwrapError",
    "active_kek",
    "card_isd_keys",
    "ensure_org_kek",
    "generate_private_key",
    "generate_static_keys",
    "load_private_key",
    "load_secret_key",
    "load_static_keys",
    "open_channel_state",
    "open_secure_channel",
    "rotate_kek",
    "seal_channel_state",
    "store_master_key",
    "store_private_key",
    "store_secret_key",
    "store_static_keys",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

Purpose = KeySet.Purpose
Algorithm = KeySet.Algorithm

_SYMMETRIC = {Algorithm.AES, Algorithm.DES3}
_ASYMMETRIC = {Algorithm.EC_P256, Algorithm.RSA, Algorithm.ED25519}
_ALLOWED: dict[str, set[str]] = {
    Purpose.SCP_STATIC: _SYMMETRIC,
    Purpose.DIVERSIFICATION_MASTER: _SYMMETRIC,
    Purpose.TOKEN_SIGNING: {Algorithm.EC_P256, Algorithm.RSA},
    Purpose.CHECKPOINT_SIGNING: {Algorithm.ED25519},
    Purpose.RECEIPT: _SYMMETRIC | _ASYMMETRIC,
}
_HEX_AID = re.compile(r"^(?:[0-9A-F]{2}){5,16}$")
_AAD_LABEL = "ecard-keyset"
_AAD_VERSION = 1


# ---------------------------------------------------------------------------
# KEKs


# Every backend's KEK is an AES-256 key that wraps with AES-GCM (issuers/keyvault.py); audit
# entries name it so. (No key has a certificate yet: entries carry no certificate serial.)
KEK_ALGORITHM = "aes-256-gcm"


def active_kek(org: Organization) -> KeyEncryptionKey | None:
    """The organisation's active KEK row, if it has one."""
    return KeyEncryptionKey.objects.filter(organization=org, state=KeyEncryptionKey.State.ACTIVE).first()


def _next_kek_version(org: Organization) -> int:
    return (KeyEncryptionKey.objects.filter(organization=org).aggregate(v=Max("version"))["v"] or 0) + 1


def _create_kek_row(org: Organization, version: int, backend: KekBackend) -> tuple[KeyEncryptionKey, KekRef]:
    """Create the KEK in the backend, then its row; the caller owns the transaction and cleanup."""
    ref = backend.create_kek(org.pk, version)
    kek = KeyEncryptionKey.objects.create(
        organization=org,
        version=version,
        backend=backend.name,
        wrapped_material=ref.material,
        hsm_label=ref.label,
        state=KeyEncryptionKey.State.ACTIVE,
    )
    return kek, ref


def _discard_hsm_kek(ref: KekRef | None) -> None:
    """Delete an HSM KEK whose row was rolled back (software KEKs vanish with their row)."""
    if ref is None or ref.backend != BACKEND_PKCS11:
        return
    try:
        get_backend(BACKEND_PKCS11).destroy(ref)
    except CustodyError:
        logger.warning("could not delete the uncommitted HSM KEK %r; custody replaces it on the next attempt", ref)


def ensure_org_kek(org: Organization, *, actor: Any = None) -> KeyEncryptionKey:
    """The organisation's active KEK, created (version 1, or the next free version) if missing."""
    kek = active_kek(org)
    if kek is not None:
        return kek
    ref: KekRef | None = None
    try:
        with transaction.atomic():
            # Serialise concurrent first uses on the organisation row.
            Organization.objects.select_for_update().filter(pk=org.pk).first()
            kek = active_kek(org)
            if kek is not None:
                return kek
            backend = get_backend()
            kek, ref = _create_kek_row(org, _next_kek_version(org), backend)
            record_event(
                action="custody.kek_created",
                subject_type="kek",
                subject_id=f"{org.slug}/v{kek.version}",
                actor=actor,
                organization=org,
                details={"version": kek.version, "key_version": kek.version, "algorithm": KEK_ALGORITHM,
                         "backend": kek.backend},
            )
            return kek
    except IntegrityError:
        _discard_hsm_kek(ref)
        kek = active_kek(org)
        if kek is None:
            raise
        return kek
    except BaseException:
        _discard_hsm_kek(ref)
        raise


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
                organization=org, card_cin=card_cin, sd_aid=sd_aid, kvn=kvn, purpose=purpose,
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
        org, keys.enc + keys.mac + keys.dek, purpose=purpose, algorithm=algorithm, key_length=keys.key_length,
        kvn=keys.version, card_cin=card_cin, sd_aid=sd_aid, kcvs=kcvs, actor=actor,
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
    import secrets

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
        org, key, purpose=purpose, algorithm=algorithm, key_length=len(key), kvn=kvn, card_cin=card_cin,
        sd_aid=sd_aid, kcvs={"enc": _kcv(algorithm, key)}, actor=actor,
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
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return _store(
        org, der, purpose=purpose, algorithm=algorithm, key_length=length, kvn=kvn, card_cin=card_cin,
        sd_aid=sd_aid, public_key=public_pem, actor=actor,
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
    return store_private_key(
        org, private_key, purpose=purpose, kvn=kvn, card_cin=card_cin, sd_aid=sd_aid, actor=actor
    )


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


_SCHEME_ALGORITHM = {"kdf3": Algorithm.AES, "emv": Algorithm.DES3, "visa2": Algorithm.DES3}


def card_isd_keys(
    agency: Organization,
    card_cin: str,
    kdd: bytes,
    scheme: Literal["kdf3", "emv", "visa2"] = "kdf3",
    *,
    kvn: int | None = None,
) -> StaticKeys:
    """The card's ISD static keys, diversified on demand from the agency's master (never stored).

    ``kdd`` is the key diversification data (bytes 0..9 of the INITIALIZE UPDATE response); the
    derivation depends on it alone, ``card_cin`` names the card for the caller's records;
    ``kvn`` selects the master's KVN (default: the highest active one for the scheme's algorithm).
    The returned keys carry the master's KVN. For secure-channel code in services/tasks only.
    """
    if not agency.is_agency:
        raise ServiceError("card ISD keys are diversified from the agency's master only", field="agency")
    algorithm = _SCHEME_ALGORITHM.get(scheme)
    if algorithm is None:
        raise ServiceError(f"unknown diversification scheme {scheme!r}", field="scheme")
    masters = KeySet.objects.filter(
        organization=agency, purpose=Purpose.DIVERSIFICATION_MASTER, algorithm=algorithm,
        state=KeySet.State.ACTIVE, card_cin="", sd_aid="",
    )
    if kvn is not None:
        masters = masters.filter(kvn=kvn)
    master = masters.order_by("-kvn").first()
    if master is None:
        raise CustodyError(f"no active {algorithm} diversification master for {agency.slug}")
    return diversify(scheme, load_secret_key(master), bytes(kdd), master.kvn)


# ---------------------------------------------------------------------------
# secure channels: session-level material for the channel code


def open_secure_channel(
    keyset: KeySet,
    *,
    security_level: int | None = None,
    host_challenge: bytes | None = None,
    i: int = 0x55,
    s16: bool = False,
    sd_aid: bytes | None = None,
) -> SCP02 | SCP03:
    """A host-side secure channel (:class:`gp.scp.SCP03` for AES, :class:`gp.scp.SCP02` for 3DES)
    keyed from a stored ``scp_static`` key set; the static keys never leave this call.

    ``security_level`` defaults to 0x33 (SCP03) / 0x03 (SCP02); ``i`` is the SCP02 option.
    For the secure-channel code in services and tasks only.
    """
    keys = load_static_keys(keyset)
    if keyset.algorithm == Algorithm.AES:
        return SCP03(keys, 0x33 if security_level is None else security_level, host_challenge, s16=s16,
                     sd_aid=sd_aid)
    return SCP02(keys, 0x03 if security_level is None else security_level, host_challenge, i=i, sd_aid=sd_aid)


def _state_aad(org: Organization, context: str, kek_version: int) -> bytes:
    return encode_aad("ecard-channel-state", 1, org.pk, context, kek_version)


def seal_channel_state(org: Organization, state: Mapping[str, Any], *, context: str) -> bytes:
    """Encrypt a channel's :meth:`session_state` (it holds session keys) under the organisation's KEK,
    bound to ``context`` (e.g. the card job id), for storing between relay round trips.

    The blob names its KEK version; after a KEK rotation older blobs no longer open (the
    session is restarted, as after any secure channel failure).
    """
    if not context:
        raise ServiceError("a channel state needs a context (e.g. the job id)", field="context")
    kek = ensure_org_kek(org)
    plaintext = json.dumps(dict(state), sort_keys=True, separators=(",", ":")).encode()
    inner = get_backend(kek.backend).wrap(kek.ref, plaintext, _state_aad(org, context, kek.version))
    return b"\x01" + kek.version.to_bytes(4, "big") + inner


def open_channel_state(org: Organization, blob: bytes, *, context: str) -> dict[str, Any]:
    """Inverse of :func:`seal_channel_state`; :class:`CustodyError` if it does not open."""
    blob = bytes(blob)
    if len(blob) < 6 or blob[0] != 0x01:
        raise UnwrapError("malformed sealed channel state")
    version = int.from_bytes(blob[1:5], "big")
    kek = KeyEncryptionKey.objects.filter(organization=org, version=version).first()
    if kek is None or kek.state == KeyEncryptionKey.State.DESTROYED:
        raise KekUnavailableError(f"the KEK v{version} of {org.slug} that sealed this channel state is gone")
    plaintext = get_backend(kek.backend).unwrap(kek.ref, blob[5:], _state_aad(org, context, version))
    try:
        state = json.loads(plaintext)
    except ValueError:
        raise UnwrapError("sealed channel state does not parse") from None
    if not isinstance(state, dict):
        raise UnwrapError("sealed channel state is not an object")
    return state


# ---------------------------------------------------------------------------
# KEK rotation


def _rewrap_keyset(keyset: KeySet, old: KeyEncryptionKey, new: KeyEncryptionKey, now: Any) -> None:
    """Unwrap with the old KEK, wrap with the new; one row. (Tests inject failures here.)"""
    plaintext = _unwrap_with(keyset, old)
    _wrap(keyset, new, plaintext)
    keyset.rewrapped_at = now
    keyset.save(update_fields=["wrapped", "kek", "rewrapped_at"])


def _destroy_kek(kek: KeyEncryptionKey, now: Any) -> None:
    ref = kek.ref
    if kek.backend == BACKEND_PKCS11:
        # Delete the HSM object only once the re-wrapped rows are durable.
        def delete() -> None:
            get_backend(BACKEND_PKCS11).destroy(ref)

        transaction.on_commit(delete, robust=True)
    else:
        get_backend(kek.backend).destroy(ref)
    kek.wrapped_material = b""
    kek.state = KeyEncryptionKey.State.DESTROYED
    kek.destroyed_at = now
    kek.save(update_fields=["wrapped_material", "state", "destroyed_at"])


def _rotate_in_transaction(
    org: Organization, backend: KekBackend, actor: Any, created: list[KekRef]
) -> KeyEncryptionKey:
    Organization.objects.select_for_update().filter(pk=org.pk).first()
    older = list(
        KeyEncryptionKey.objects.select_for_update()
        .filter(organization=org)
        .exclude(state=KeyEncryptionKey.State.DESTROYED)
        .order_by("version")
    )
    by_id = {k.pk: k for k in older}
    keysets = list(KeySet.objects.select_for_update().filter(organization=org).order_by("pk"))
    version = _next_kek_version(org)
    for kek in older:
        if kek.state == KeyEncryptionKey.State.ACTIVE:
            kek.state = KeyEncryptionKey.State.RETIRED
            kek.save(update_fields=["state"])
    ref = backend.create_kek(org.pk, version)
    created.append(ref)
    new = KeyEncryptionKey.objects.create(
        organization=org, version=version, backend=backend.name, wrapped_material=ref.material,
        hsm_label=ref.label, state=KeyEncryptionKey.State.ACTIVE,
    )
    now = timezone.now()
    for keyset in keysets:
        old = by_id.get(keyset.kek_id)
        if old is None:
            raise KekUnavailableError(f"{keyset!r} is wrapped under a destroyed KEK")
        _rewrap_keyset(keyset, old, new, now)
    for kek in older:
        _destroy_kek(kek, now)
    record_event(
        action="custody.kek_rotated",
        subject_type="kek",
        subject_id=f"{org.slug}/v{version}",
        actor=actor,
        organization=org,
        details={
            "old_versions": [k.version for k in older],
            "new_version": version,
            "key_version": version,
            "algorithm": KEK_ALGORITHM,
            "backend": backend.name,
            "key_sets_rewrapped": len(keysets),
        },
    )
    return new


def rotate_kek(org: Organization, actor: Any = None, *, backend: str | None = None) -> KeyEncryptionKey:
    """Replace the organisation's KEK: create version v+1, re-wrap every key set, destroy the old KEK.

    All in one (durable, top-level) transaction with the rows locked: on any failure nothing
    changes (a KEK already created in the HSM is deleted again) and every key still unwraps under
    the old KEK. Readers never block: until the commit they see rows under the old KEK, after it
    rows under the new one (see :func:`_unwrap`). An HSM KEK is deleted from the token only after
    the commit. ``backend`` (default ``ECARD_KEY_BACKEND``) is where the new KEK is created, so a
    rotation also moves an organisation from the software backend into the HSM.
    """
    kek_backend = get_backend(backend)
    created: list[KekRef] = []
    try:
        with transaction.atomic(durable=True):
            return _rotate_in_transaction(org, kek_backend, actor, created)
    except BaseException as exc:
        for ref in created:
            _discard_hsm_kek(ref)
        if isinstance(exc, Exception):
            with transaction.atomic():
                record_event(
                    action="custody.kek_rotated",
                    subject_type="kek",
                    subject_id=org.slug,
                    actor=actor,
                    organization=org,
                    outcome="failure",
                    reason=f"rotation rolled back: {type(exc).__name__}",
                )
        raise

