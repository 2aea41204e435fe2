"""Card keys: ISD keys diversified on demand from the agency's master (never stored), and host-side
secure channels keyed from a stored key set (the static keys never leave the call).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from django.core.signals import setting_changed

from ecard.errors import ServiceError
from ecard.prepared_sql import JoinedRead
from gp.keys import StaticKeys, diversify
from gp.scp import SCP02, SCP03
from issuers.custody.keysets import Algorithm, Purpose, load_secret_key, load_static_keys
from issuers.custody.sealing import DATA_KEY_LIFETIME
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.keyvault import CustodyError
from issuers.models import Organization

_SCHEME_ALGORITHM = {"kdf3": Algorithm.AES, "emv": Algorithm.DES3, "visa2": Algorithm.DES3}

# Seconds a process keeps a diversification master it unwrapped: the period of the channel-state
# data keys (issuers.custody.sealing), for the same reason (no KEK unwrap, an HSM round trip with
# PKCS#11, on every channel opening).
MASTER_KEY_LIFETIME = DATA_KEY_LIFETIME


@dataclass
class _Master:
    organization_id: int
    kek_id: int
    wrapped: bytes
    key: bytes = field(repr=False)
    made: float

    def fresh(self) -> bool:
        return time.monotonic() - self.made < MASTER_KEY_LIFETIME


class _MasterKeys:
    """This process's unwrapped diversification masters, by key set, in memory only (never logged,
    never in a shared cache). An entry serves only the key set row it was unwrapped from: the same
    KEK and the same wrapped bytes, that KEK not destroyed (read with the row, no extra query). A
    KEK rotation re-wraps the row under the new KEK, so the next read no longer matches and the
    entry is dropped; a KEK found destroyed drops every entry of its organisation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[int, _Master] = {}

    def get(self, master: KeySet) -> bytes | None:
        with self._lock:
            entry = self._keys.get(master.pk)
        if entry is None:
            return None
        kek = master.kek
        if kek.state == KeyEncryptionKey.State.DESTROYED:
            self.forget(master.organization_id)
            return None
        if not entry.fresh() or entry.kek_id != master.kek_id or entry.wrapped != bytes(master.wrapped):
            with self._lock:
                if self._keys.get(master.pk) is entry:
                    del self._keys[master.pk]
            return None
        return entry.key

    def put(self, master: KeySet, key: bytes) -> None:
        entry = _Master(master.organization_id, master.kek_id, bytes(master.wrapped), key, time.monotonic())
        with self._lock:
            if len(self._keys) > 256:  # bounded: drop what expired
                self._keys = {k: v for k, v in self._keys.items() if v.fresh()}
            self._keys[master.pk] = entry

    def forget(self, organization_id: int | None = None) -> None:
        with self._lock:
            if organization_id is None:
                self._keys.clear()
            else:
                self._keys = {k: v for k, v in self._keys.items() if v.organization_id != organization_id}


_master_keys = _MasterKeys()


def forget_master_keys(organization_id: int | None = None) -> None:
    """Drop this process's unwrapped masters (of one organisation, or all): a KEK of it found
    destroyed, a settings change, tests (``sealing.forget_data_keys`` calls it)."""
    _master_keys.forget(organization_id)


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting.startswith("ECARD_") or setting == "DEBUG":
        forget_master_keys()  # a master key or backend changed: unwrap again


setting_changed.connect(_on_setting_changed, dispatch_uid="issuers.custody.card_keys.forget_master_keys")


def _master_secret(master: KeySet) -> bytes:
    """The clear master, unwrapped under its KEK once per :data:`MASTER_KEY_LIFETIME`."""
    key = _master_keys.get(master)
    if key is None:
        key = load_secret_key(master)  # re-reads the row if a rotation re-wrapped it meanwhile
        _master_keys.put(master, key)
    return key


# The agency's active diversification masters with their KEKs, read at every ISD channel opening:
# a prepared statement (ecard.prepared_sql).
_ACTIVE_MASTERS: JoinedRead[KeySet] = JoinedRead(
    KeySet, ("kek",), ("organization", "purpose", "algorithm", "state", "card_cin", "sd_aid")
)


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
    masters = _ACTIVE_MASTERS.rows(agency.pk, Purpose.DIVERSIFICATION_MASTER, algorithm, KeySet.State.ACTIVE, "", "")
    if kvn is not None:
        masters = [m for m in masters if m.kvn == kvn]
    # The highest KVN, chosen here among the few active masters rather than by an ORDER BY.
    master = max(masters, key=lambda m: m.kvn, default=None)
    if master is None:
        raise CustodyError(f"no active {algorithm} diversification master for {agency.slug}")
    return diversify(scheme, _master_secret(master), bytes(kdd), master.kvn)


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
        return SCP03(keys, 0x33 if security_level is None else security_level, host_challenge, s16=s16, sd_aid=sd_aid)
    return SCP02(keys, 0x03 if security_level is None else security_level, host_challenge, i=i, sd_aid=sd_aid)
