"""Channel-state sealing: a secure channel's session state (it holds session keys) is stored between
relay round trips only encrypted, bound to a context (the card session id) and to the owning
organisation's KEK version.

Sealing happens on every relay exchange, so it must not cost a KEK unwrap (an HSM round trip
with PKCS#11) each time. Envelope encryption with short-lived data keys:

* each process holds, per organisation, a random AES-256 *data key* for at most
  :data:`DATA_KEY_LIFETIME` seconds. It is wrapped under the organisation's active KEK once, when
  made, and that wrapped copy travels in every blob it seals;
* a process opening a blob unwraps its data key under the KEK once and keeps it in memory for the
  same lifetime (any web process can take the next exchange: no session affinity);
* an open checks that the KEK version named by the blob is still there (one indexed read),
  unless this process saw that version active within :data:`KEK_CHECK_INTERVAL` and holds the
  blob's data key: after a KEK rotation, states sealed under the old KEK no longer open (the
  session restarts like after any channel failure), at once in the rotating process and within
  that second in the others, whatever they hold in memory. A seal uses its data key only while
  its KEK version is the active one, on the same terms.

Data keys live only in process memory and, wrapped under the KEK, in the blobs; they are never
logged or stored in clear. Blobs of the first format (``0x01``: the state wrapped under the KEK
itself) still open.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import transaction

from ecard.errors import ServiceError
from ecard.prepared_sql import JoinedRead
from issuers.custody.kek import ensure_org_kek
from issuers.custody_models import KeyEncryptionKey
from issuers.keyvault import KekUnavailableError, UnwrapError, encode_aad, get_backend
from issuers.models import Organization

FORMAT_KEK = 0x01  # the state wrapped under the KEK (opened only)
FORMAT_DATA_KEY = 0x02  # the state under a data key, the data key wrapped under the KEK
DATA_KEY_LIFETIME = 300.0  # seconds a process seals with one data key (and keeps one it opened)
KEK_CHECK_INTERVAL = 1.0  # seconds a KEK version seen active by an open spares the seal its own check
_DK_ID_LEN = 16
_NONCE_LEN = 12


def _state_aad(org: Organization, context: str, kek_version: int) -> bytes:
    return encode_aad("ecard-channel-state", 1, org.pk, context, kek_version)


def _data_key_aad(org_pk: int, kek_version: int, dk_id: bytes) -> bytes:
    return encode_aad("ecard-channel-data-key", 1, org_pk, kek_version, dk_id)


def _sealed_aad(org_pk: int, context: str, kek_version: int, dk_id: bytes) -> bytes:
    return encode_aad("ecard-channel-state", 2, org_pk, context, kek_version, dk_id)


@dataclass
class _DataKey:
    kek_version: int
    dk_id: bytes
    wrapped: bytes
    aead: AESGCM = field(repr=False)  # the key itself stays inside the AEAD object
    made: float

    def fresh(self) -> bool:
        return time.monotonic() - self.made < DATA_KEY_LIFETIME


class _DataKeys:
    """This process's data keys: the one it seals with per organisation, the ones it opened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sealing: dict[int, _DataKey] = {}
        self._opened: dict[tuple[int, int, bytes], _DataKey] = {}
        self._active_seen: dict[tuple[int, int], float] = {}  # (org, KEK version) -> monotonic time read active

    def for_sealing(self, org: Organization) -> _DataKey:
        with self._lock:
            current = self._sealing.get(org.pk)
        if current is not None and current.fresh():
            if self._recently_active(org.pk, current.kek_version):
                return current  # an open or seal of this process just saw its KEK active
            if KeyEncryptionKey.objects.filter(
                organization=org, version=current.kek_version, state=KeyEncryptionKey.State.ACTIVE
            ).exists():
                self.seen_active(org.pk, current.kek_version)
                return current
        kek = ensure_org_kek(org)
        key = os.urandom(32)
        dk_id = os.urandom(_DK_ID_LEN)
        wrapped = get_backend(kek.backend).wrap(kek.ref, key, _data_key_aad(org.pk, kek.version, dk_id))
        made = _DataKey(kek.version, dk_id, wrapped, AESGCM(key), time.monotonic())
        with self._lock:
            self._sealing[org.pk] = made
            self._opened[(org.pk, kek.version, dk_id)] = made
        if kek.state == KeyEncryptionKey.State.ACTIVE:
            self.seen_active(org.pk, kek.version)
        return made

    def for_opening(self, kek: KeyEncryptionKey, dk_id: bytes, wrapped: bytes) -> _DataKey:
        index = (kek.organization_id, kek.version, dk_id)
        with self._lock:
            known = self._opened.get(index)
            if len(self._opened) > 4096:  # bounded: drop what expired
                self._opened = {k: v for k, v in self._opened.items() if v.fresh()}
        if known is not None and known.fresh() and known.wrapped == wrapped:
            return known
        key = get_backend(kek.backend).unwrap(kek.ref, wrapped, _data_key_aad(kek.organization_id, kek.version, dk_id))
        if len(key) != 32:
            raise UnwrapError("malformed channel-state data key")
        opened = _DataKey(kek.version, dk_id, wrapped, AESGCM(key), time.monotonic())
        with self._lock:
            self._opened[index] = opened
        return opened

    def seen_active(self, org_pk: int, kek_version: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._active_seen[(org_pk, kek_version)] = now
            if len(self._active_seen) > 4096:  # bounded: keep what still vouches
                self._active_seen = {k: t for k, t in self._active_seen.items() if now - t < KEK_CHECK_INTERVAL}

    def _recently_active(self, org_pk: int, kek_version: int) -> bool:
        """Whether this process read the KEK version active within :data:`KEK_CHECK_INTERVAL`."""
        with self._lock:
            seen = self._active_seen.get((org_pk, kek_version))
        return seen is not None and time.monotonic() - seen < KEK_CHECK_INTERVAL

    def vouched_for_opening(self, org_pk: int, kek_version: int, dk_id: bytes, wrapped: bytes) -> _DataKey | None:
        """The blob's data key, if this process holds it and saw its KEK version active within
        :data:`KEK_CHECK_INTERVAL` (the open then needs no read of the KEK); else None."""
        if not self._recently_active(org_pk, kek_version):
            return None
        with self._lock:
            known = self._opened.get((org_pk, kek_version, dk_id))
        if known is None or not known.fresh() or known.wrapped != wrapped:
            return None
        return known

    def forget(self, org_pk: int, kek_version: int) -> None:
        """A KEK version found not active: stop sealing with, and opening by, its data keys here."""
        with self._lock:
            current = self._sealing.get(org_pk)
            if current is not None and current.kek_version == kek_version:
                del self._sealing[org_pk]
            self._opened = {k: v for k, v in self._opened.items() if k[:2] != (org_pk, kek_version)}
            self._active_seen.pop((org_pk, kek_version), None)

    def clear(self) -> None:
        with self._lock:
            self._sealing.clear()
            self._opened.clear()
            self._active_seen.clear()


_data_keys = _DataKeys()


def forget_kek_version(org_pk: int, kek_version: int) -> None:
    """This process stops sealing with, and opening by, the data keys of a KEK version that a
    rotation retires or destroys (at once, and again when the rotation commits: a concurrent open
    may have vouched for it meanwhile). Other processes stop within :data:`KEK_CHECK_INTERVAL`."""
    _data_keys.forget(org_pk, kek_version)
    transaction.on_commit(lambda: _data_keys.forget(org_pk, kek_version))


def forget_data_keys() -> None:
    """Drop this process's data keys, and the diversification masters it keeps for the same period
    (tests; a process that wants to seal under a new KEK at once)."""
    _data_keys.clear()
    from issuers.custody.card_keys import forget_master_keys  # late: card_keys imports this module

    forget_master_keys()


def seal_channel_state(org: Organization, state: Mapping[str, Any], *, context: str) -> bytes:
    """Encrypt a channel's :meth:`session_state` (it holds session keys) for storing between relay
    round trips, bound to ``context`` (the card session id) and the organisation's KEK version.

    Format 2: ``02 | KEK version (4) | data key id (16) | length (2) | data key wrapped under the
    KEK | nonce (12) | AES-256-GCM of the state``. After a KEK rotation older blobs no longer
    open (the session is restarted, as after any secure channel failure).
    """
    if not context:
        raise ServiceError("a channel state needs a context (e.g. the job id)", field="context")
    dk = _data_keys.for_sealing(org)
    plaintext = json.dumps(dict(state), sort_keys=True, separators=(",", ":")).encode()
    nonce = os.urandom(_NONCE_LEN)
    sealed = dk.aead.encrypt(nonce, plaintext, _sealed_aad(org.pk, context, dk.kek_version, dk.dk_id))
    return (
        bytes((FORMAT_DATA_KEY,))
        + dk.kek_version.to_bytes(4, "big")
        + dk.dk_id
        + len(dk.wrapped).to_bytes(2, "big")
        + dk.wrapped
        + nonce
        + sealed
    )


# Read on every relay exchange that opens a channel state: a prepared statement (ecard.prepared_sql).
_KEK_BY_VERSION: JoinedRead[KeyEncryptionKey] = JoinedRead(KeyEncryptionKey, (), ("organization", "version"))


def _sealing_kek(org: Organization, version: int) -> KeyEncryptionKey:
    """The KEK row of ``version`` that sealed a state, refused once destroyed or gone (one read)."""
    kek = _KEK_BY_VERSION.first(org.pk, version)  # one per organisation and version
    if kek is None or kek.state == KeyEncryptionKey.State.DESTROYED:
        _data_keys.forget(org.pk, version)
        from issuers.custody.card_keys import forget_master_keys  # late: card_keys imports this module

        forget_master_keys(org.pk)
        raise KekUnavailableError(f"the KEK v{version} of {org.slug} that sealed this channel state is gone")
    if kek.state == KeyEncryptionKey.State.ACTIVE:
        _data_keys.seen_active(org.pk, version)
    return kek


def open_channel_state(org: Organization, blob: bytes, *, context: str) -> dict[str, Any]:
    """Inverse of :func:`seal_channel_state`; :class:`CustodyError` if it does not open."""
    blob = bytes(blob)
    if len(blob) < 6 or blob[0] not in (FORMAT_KEK, FORMAT_DATA_KEY):
        raise UnwrapError("malformed sealed channel state")
    version = int.from_bytes(blob[1:5], "big")
    if blob[0] == FORMAT_KEK:
        kek = _sealing_kek(org, version)
        plaintext = get_backend(kek.backend).unwrap(kek.ref, blob[5:], _state_aad(org, context, version))
    else:
        plaintext = _open_data_key_blob(org, version, blob, context)
    try:
        state = json.loads(plaintext)
    except ValueError:
        raise UnwrapError("sealed channel state does not parse") from None
    if not isinstance(state, dict):
        raise UnwrapError("sealed channel state is not an object")
    return state


def _open_data_key_blob(org: Organization, version: int, blob: bytes, context: str) -> bytes:
    at = 5
    dk_id = blob[at : at + _DK_ID_LEN]
    at += _DK_ID_LEN
    if len(blob) < at + 2:
        raise UnwrapError("malformed sealed channel state")
    wrapped_len = int.from_bytes(blob[at : at + 2], "big")
    at += 2
    wrapped = blob[at : at + wrapped_len]
    at += wrapped_len
    nonce = blob[at : at + _NONCE_LEN]
    at += _NONCE_LEN
    if len(dk_id) != _DK_ID_LEN or len(wrapped) != wrapped_len or len(nonce) != _NONCE_LEN or len(blob) <= at:
        raise UnwrapError("malformed sealed channel state")
    dk = _data_keys.vouched_for_opening(org.pk, version, dk_id, wrapped)
    if dk is None:
        dk = _data_keys.for_opening(_sealing_kek(org, version), dk_id, wrapped)
    try:
        return dk.aead.decrypt(nonce, blob[at:], _sealed_aad(org.pk, context, version, dk_id))
    except InvalidTag:
        raise UnwrapError("sealed channel state does not open (altered, or another context)") from None
