"""Key-encryption-key backends of the key custody (DESIGN §7).

One interface, :class:`KekBackend`, two implementations:

* :class:`SoftwareBackend` — each organisation's KEK is a random AES-256 key that exists in the
  database only wrapped (AES-GCM) under a master key taken from the environment
  (``ECARD_MASTER_KEY``). Data keys are wrapped under the KEK with AES-GCM.
* :class:`Pkcs11Backend` — each KEK is a non-extractable AES-256 secret key object generated in a
  PKCS#11 token (an HSM; SoftHSM2 in tests); wrapping and unwrapping run inside the token
  (``CKM_AES_GCM``), so the KEK never leaves it.

Both produce self-describing blobs ``format byte || 96-bit nonce || ciphertext || 128-bit tag``
and authenticate caller-supplied associated data (AAD) that binds the blob to its owner, card,
security domain, KVN, purpose and KEK version (see :mod:`issuers.custody`).

Nothing here logs, returns in an exception or puts in a ``repr`` any key byte: errors carry the
KEK's organisation id and version only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_PKCS11",
    "BACKEND_SOFTWARE",
    "CustodyError",
    "KekBackend",
    "KekRef",
    "KekUnavailableError",
    "Pkcs11Backend",
    "SoftwareBackend",
    "UnwrapError",
    "default_backend_name",
    "encode_aad",
    "get_backend",
    "reset_backends",
]

BACKEND_SOFTWARE = "software"
BACKEND_PKCS11 = "pkcs11"

NONCE_BYTES = 12
TAG_BYTES = 16
_FORMAT_SOFTWARE = 0x01
_FORMAT_PKCS11 = 0x02


class CustodyError(Exception):
    """A key custody operation failed. Messages never contain key material."""


class UnwrapError(CustodyError):
    """A wrapped blob did not decrypt: wrong KEK, altered blob, or AAD of another key set."""


class KekUnavailableError(CustodyError):
    """The KEK is destroyed, missing from the HSM, or its backend is not configured."""


def encode_aad(*fields: str | int | bytes) -> bytes:
    """Unambiguous associated data: each field as a 2-byte length and its bytes (ints as decimal)."""
    out = bytearray()
    for item in fields:
        if isinstance(item, bytes):
            raw = item
        elif isinstance(item, int):
            raw = str(item).encode("ascii")
        else:
            raw = item.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise CustodyError("AAD field too long")
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


@dataclass(frozen=True)
class KekRef:
    """A reference to a KEK: owner organisation id, version, backend and (PKCS#11) object label.

    A reference never carries the KEK: the software backend reads the wrapped KEK from its
    database row at each use (so a destroyed KEK stays destroyed for every old reference), and a
    PKCS#11 KEK stays in the token. ``material`` is set only on the reference :meth:`create_kek`
    returns: the wrapped KEK (ciphertext under the master key) that custody stores in the new row.
    """

    organization_id: int
    version: int
    backend: str
    material: bytes = field(default=b"", repr=False)
    label: str = ""

    def __repr__(self) -> str:
        return f"KekRef(org={self.organization_id}, version={self.version}, backend={self.backend})"

    __str__ = __repr__


class KekBackend(ABC):
    """What custody needs from a KEK store."""

    name: str

    @abstractmethod
    def create_kek(self, organization_id: int, version: int) -> KekRef:
        """Create a fresh KEK for (organisation, version) and return its reference."""

    @abstractmethod
    def wrap(self, kek: KekRef, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` under the KEK, binding ``aad``."""

    def wrap_many(self, kek: KekRef, items: list[tuple[bytes, bytes]]) -> list[bytes]:
        """:meth:`wrap` for each ``(plaintext, aad)``, in order (a backend may open the KEK once)."""
        return [self.wrap(kek, plaintext, aad) for plaintext, aad in items]

    @abstractmethod
    def unwrap(self, kek: KekRef, blob: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`wrap`; :class:`UnwrapError` on any mismatch."""

    @abstractmethod
    def destroy(self, kek: KekRef) -> None:
        """Make the KEK unusable for ever (software: forget it; PKCS#11: delete the object)."""

    def _split(self, kek: KekRef, blob: bytes, fmt: int) -> tuple[bytes, bytes]:
        blob = bytes(blob)
        if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[0] != fmt:
            raise UnwrapError(f"malformed wrapped key for {kek!r}")
        return blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]


# ---------------------------------------------------------------------------
# software


def parse_master_key(raw: str) -> bytes:
    """A 32-byte master key from 64 hex digits or base64 (standard or URL-safe)."""
    text = raw.strip()
    key: bytes | None = None
    if len(text) == 64:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            altchars = b"-_" if ("-" in text or "_" in text) else None
            key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != 32:
        raise ImproperlyConfigured("ECARD_MASTER_KEY must be 32 bytes, as 64 hex digits or base64")
    return key


def _material_from_database(kek: KekRef) -> bytes:
    """The wrapped KEK as stored now in its ``KeyEncryptionKey`` row (empty once destroyed)."""
    from issuers.custody_models import KeyEncryptionKey

    row = (
        KeyEncryptionKey.objects.filter(organization_id=kek.organization_id, version=kek.version)
        .values_list("wrapped_material", "state")
        .first()
    )
    if row is None or row[1] == "destroyed":
        return b""
    return bytes(row[0] or b"")


class SoftwareBackend(KekBackend):
    """KEKs wrapped under an environment-supplied master key; everything AES-256-GCM in process.

    ``ECARD_MASTER_KEY_PREVIOUS`` (optional) is a former master key still accepted for opening
    KEKs: after changing the master key, ``rotate_kek --all`` re-creates every KEK under the new
    one, and the previous master can then be discarded (old database backups become unreadable).
    """

    name = BACKEND_SOFTWARE

    def __init__(
        self,
        master_key: bytes | None = None,
        *,
        previous_master_keys: tuple[bytes, ...] | None = None,
        material_source: Callable[[KekRef], bytes] = _material_from_database,
    ) -> None:
        self._material_source = material_source
        if previous_master_keys is None:
            raw_previous = getattr(settings, "ECARD_MASTER_KEY_PREVIOUS", "")
            previous_master_keys = (parse_master_key(raw_previous),) if raw_previous else ()
        if master_key is None:
            raw = getattr(settings, "ECARD_MASTER_KEY", "")
            if not raw:
                # No public fallback key: outside production the settings generate one per
                # installation (ecard/local_secrets.py); production must set its own.
                raise ImproperlyConfigured("ECARD_MASTER_KEY is not set")
            master_key = parse_master_key(raw)
        if len(master_key) != 32:
            raise ImproperlyConfigured("the custody master key must be 32 bytes")
        self._master = AESGCM(master_key)
        self._previous = tuple(AESGCM(k) for k in previous_master_keys)

    def __repr__(self) -> str:
        return "SoftwareBackend(master=<hidden>)"

    @staticmethod
    def _kek_aad(organization_id: int, version: int) -> bytes:
        return encode_aad("ecard-kek", 1, organization_id, version)

    def create_kek(self, organization_id: int, version: int) -> KekRef:
        kek = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        material = (
            bytes((_FORMAT_SOFTWARE,))
            + nonce
            + self._master.encrypt(nonce, kek, self._kek_aad(organization_id, version))
        )
        return KekRef(organization_id, version, self.name, material=material)

    def _open_kek(self, kek: KekRef) -> AESGCM:
        if kek.backend != self.name:
            raise KekUnavailableError(f"{kek!r} is not a software KEK")
        material = self._material_source(kek)
        if not material:
            raise KekUnavailableError(f"{kek!r} is destroyed or unknown")
        nonce, sealed = self._split(kek, material, _FORMAT_SOFTWARE)
        aad = self._kek_aad(kek.organization_id, kek.version)
        for master in (self._master, *self._previous):
            try:
                return AESGCM(master.decrypt(nonce, sealed, aad))
            except InvalidTag:
                continue
        raise UnwrapError(f"{kek!r} does not open under the configured master key")

    def wrap(self, kek: KekRef, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return bytes((_FORMAT_SOFTWARE,)) + nonce + self._open_kek(kek).encrypt(nonce, bytes(plaintext), aad)

    def wrap_many(self, kek: KekRef, items: list[tuple[bytes, bytes]]) -> list[bytes]:
        """The KEK read and opened once for the lot (a bulk import: thousands of keys)."""
        cipher = self._open_kek(kek)
        out = []
        for plaintext, aad in items:
            nonce = os.urandom(NONCE_BYTES)
            out.append(bytes((_FORMAT_SOFTWARE,)) + nonce + cipher.encrypt(nonce, bytes(plaintext), aad))
        return out

    def unwrap(self, kek: KekRef, blob: bytes, aad: bytes) -> bytes:
        cipher = self._open_kek(kek)
        nonce, sealed = self._split(kek, blob, _FORMAT_SOFTWARE)
        try:
            return cipher.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise UnwrapError(f"wrapped key does not authenticate under {kek!r}") from None

    def destroy(self, kek: KekRef) -> None:
        # The KEK exists only as the wrapped material in its database row; custody erases that
        # field in the same transaction (see issuers.custody.rotate_kek).
        return None


# ---------------------------------------------------------------------------
# PKCS#11

_pkcs11_libs: dict[str, tuple[Any, int]] = {}
_pkcs11_libs_lock = threading.Lock()


def _load_pkcs11_lib(module: str) -> Any:
    """The PKCS#11 library, initialised once per process (again in a forked child, as PKCS#11 requires)."""
    import pkcs11

    with _pkcs11_libs_lock:
        cached = _pkcs11_libs.get(module)
        if cached is None:
            lib = pkcs11.lib(module)
        else:
            lib, pid = cached
            if pid != os.getpid():
                lib.reinitialize()
        _pkcs11_libs[module] = (lib, os.getpid())
        return lib


class Pkcs11Backend(KekBackend):
    """KEKs are AES-256 secret key objects in a PKCS#11 token; wrap/unwrap is CKM_AES_GCM in the token.

    One logged-in session per process (re-opened after a fork or a lost session), used under a
    lock: PKCS#11 login state is per application, so sessions are not opened per call.
    """

    name = BACKEND_PKCS11

    def __init__(self, module: str | None = None, token_label: str | None = None, pin: str | None = None) -> None:
        # An unset or None setting reads as "" (refused just below either way).
        self._module: str = module or getattr(settings, "ECARD_PKCS11_MODULE", "") or ""
        self._token_label: str = token_label or getattr(settings, "ECARD_PKCS11_TOKEN", "") or ""
        self._pin: str = pin or getattr(settings, "ECARD_PKCS11_PIN", "") or ""
        if not (self._module and self._token_label and self._pin):
            raise ImproperlyConfigured("the PKCS#11 key backend needs ECARD_PKCS11_MODULE, _TOKEN and _PIN")
        self._lock = threading.RLock()
        self._session: Any = None
        self._pid = 0

    def __repr__(self) -> str:
        return f"Pkcs11Backend(module={self._module!r}, token={self._token_label!r})"

    @staticmethod
    def label_for(organization_id: int, version: int) -> str:
        return f"ecard-kek-{organization_id}-{version}"

    def _open_session(self) -> Any:
        import pkcs11

        if self._session is not None and self._pid == os.getpid():
            return self._session
        try:
            lib = _load_pkcs11_lib(self._module)
            try:
                token = lib.get_token(token_label=self._token_label)
            except pkcs11.exceptions.NoSuchToken:
                # SoftHSM2 lists the tokens it found at C_Initialize; one made since (another
                # token in the same test process, tests/softhsm.py) appears after a re-initialisation.
                lib.reinitialize()
                token = lib.get_token(token_label=self._token_label)
            try:
                session = token.open(rw=True, user_pin=self._pin)
            except pkcs11.exceptions.UserAlreadyLoggedIn:
                session = token.open(rw=True)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise KekUnavailableError(f"cannot open the PKCS#11 token: {type(exc).__name__}") from None
        self._session, self._pid = session, os.getpid()
        return session

    def close(self) -> None:
        with self._lock:
            if self._session is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):  # closing a dead session is best effort
                    self._session.close()
            self._session = None

    def _call(self, operation: Any) -> Any:
        """Run ``operation(session)``; on a lost session re-open once and retry."""
        import pkcs11

        with self._lock:
            try:
                return operation(self._open_session())
            except (
                pkcs11.exceptions.SessionHandleInvalid,
                pkcs11.exceptions.SessionClosed,
                pkcs11.exceptions.DeviceRemoved,
                pkcs11.exceptions.TokenNotPresent,
            ):
                self._session = None
                return operation(self._open_session())

    def _find(self, session: Any, kek: KekRef) -> Any:
        import pkcs11
        from pkcs11 import KeyType, ObjectClass

        try:
            return session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=kek.label)
        except pkcs11.exceptions.NoSuchKey:
            raise KekUnavailableError(f"{kek!r} is not in the token") from None
        except pkcs11.exceptions.MultipleObjectsReturned:
            raise KekUnavailableError(f"{kek!r}: several token objects share its label") from None

    def create_kek(self, organization_id: int, version: int) -> KekRef:
        import pkcs11
        from pkcs11 import Attribute, KeyType, MechanismFlag

        label = self.label_for(organization_id, version)
        ref = KekRef(organization_id, version, self.name, label=label)

        def generate(session: Any) -> None:
            # Custody asks only for versions that have no database row, so an object with this
            # label is an orphan of a rolled-back transaction: replace it.
            for orphan in list(session.get_objects({Attribute.LABEL: label})):
                logger.warning("replacing orphaned token object for %r", ref)
                orphan.destroy()
            session.generate_key(
                KeyType.AES,
                256,
                label=label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.MODIFIABLE: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                    Attribute.DERIVE: False,
                },
            )

        try:
            self._call(generate)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise CustodyError(f"{ref!r}: key generation failed in the token: {type(exc).__name__}") from None
        return ref

    def wrap(self, kek: KekRef, plaintext: bytes, aad: bytes) -> bytes:
        import pkcs11
        from pkcs11 import GCMParams, Mechanism

        nonce = os.urandom(NONCE_BYTES)

        def encrypt(session: Any) -> bytes:
            key = self._find(session, kek)
            return key.encrypt(
                bytes(plaintext),
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, bytes(aad), TAG_BYTES * 8),
            )

        try:
            sealed = self._call(encrypt)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise CustodyError(f"wrapping under {kek!r} failed in the token: {type(exc).__name__}") from None
        return bytes((_FORMAT_PKCS11,)) + nonce + bytes(sealed)

    def unwrap(self, kek: KekRef, blob: bytes, aad: bytes) -> bytes:
        import pkcs11
        from pkcs11 import GCMParams, Mechanism

        nonce, sealed = self._split(kek, blob, _FORMAT_PKCS11)

        def decrypt(session: Any) -> bytes:
            key = self._find(session, kek)
            return key.decrypt(
                sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, bytes(aad), TAG_BYTES * 8)
            )

        try:
            return bytes(self._call(decrypt))
        except pkcs11.exceptions.PKCS11Error as exc:
            raise UnwrapError(f"wrapped key does not authenticate under {kek!r}: {type(exc).__name__}") from None

    def destroy(self, kek: KekRef) -> None:
        import pkcs11
        from pkcs11 import Attribute, ObjectClass

        def delete(session: Any) -> None:
            for obj in list(session.get_objects({Attribute.LABEL: kek.label, Attribute.CLASS: ObjectClass.SECRET_KEY})):
                obj.destroy()

        try:
            self._call(delete)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise CustodyError(f"destroying {kek!r} failed in the token: {type(exc).__name__}") from None


# ---------------------------------------------------------------------------
# selection

_backends: dict[str, KekBackend] = {}
_backends_lock = threading.Lock()


def default_backend_name() -> str:
    """The backend new KEKs are created in (``ECARD_KEY_BACKEND``)."""
    name = getattr(settings, "ECARD_KEY_BACKEND", BACKEND_SOFTWARE) or BACKEND_SOFTWARE
    if name not in (BACKEND_SOFTWARE, BACKEND_PKCS11):
        raise ImproperlyConfigured("ECARD_KEY_BACKEND must be 'software' or 'pkcs11'")
    return name


def get_backend(name: str | None = None) -> KekBackend:
    """The process-wide backend instance called ``name`` (default: ``ECARD_KEY_BACKEND``)."""
    name = name or default_backend_name()
    with _backends_lock:
        backend = _backends.get(name)
        if backend is None:
            if name == BACKEND_SOFTWARE:
                backend = SoftwareBackend()
            elif name == BACKEND_PKCS11:
                backend = Pkcs11Backend()
            else:
                raise KekUnavailableError(f"unknown key backend {name!r}")
            _backends[name] = backend
        return backend


def reset_backends() -> None:
    """Forget the cached backends (after a settings change; tests)."""
    with _backends_lock:
        for backend in _backends.values():
            if isinstance(backend, Pkcs11Backend):
                backend.close()
        _backends.clear()


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting.startswith("ECARD_") or setting == "DEBUG":
        reset_backends()


setting_changed.connect(_on_setting_changed, dispatch_uid="issuers.keyvault.reset_backends")
