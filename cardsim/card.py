"""The emulated GlobalPlatform card: ``Card.transmit(capdu) -> rapdu`` over a JSON state (no I/O).

Section numbers refer to GlobalPlatform Card Specification v2.3.1 (GPC_SPE_034) unless noted;
Amd D is the SCP03 amendment. The persistent state layout is described in :mod:`cardsim.state`;
what lives only while powered (selection, secure channel session, GET STATUS cursor,
personalisation target) is volatile and lost on reset, as on a real card.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Callable
from typing import Any

from cardsim.constants import INSTANCE_COST, RECEIPT_KVN, TOKEN_KVN
from cardsim.handlers import applets, channel, content, keys, select, status, upgrade
from cardsim.handlers.common import ISD as ISD
from cardsim.handlers.common import _ok as _ok
from cardsim.handlers.common import _Reply as _Reply
from cardsim.handlers.common import _sw as _sw
from cardsim.state import Record, State, check_state, kvn_key, load_public_key, personalization, unhx
from gp import dm
from gp.apdu import SW, CommandAPDU
from gp.commands import CardLifeCycle, Privileges, SecurityDomainLifeCycle
from gp.errors import GPError
from gp.scp.card import CardSCP02, CardSCP03, sw_for_error
from gp.scp11 import CardSCP11, Ins, SCP11Variant

SecureChannel = CardSCP02 | CardSCP03 | CardSCP11

# Commands that change the card (GP 2.3.1 §11): in an SCP11b session, whose off-card entity is
# not authenticated (Amd F §3.1.2), an SD takes them only before its first personalisation.
_CONTENT_CHANGING_INS = frozenset({0xE6, 0xE8, 0xE4, 0xF0, 0xE2, 0xD8, 0xEA})


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


Handler = Callable[["Card", CommandAPDU, bytes], bytes]
"""``handler(card, cmd, plain) -> rapdu``; ``plain`` is the command APDU after secure channel unwrapping."""

# The dispatch table of the Security Domain commands that run inside the secure channel session:
# INS -> (handler, whether it needs the proprietary GP class; GP 2.3.1 §11.1.4).
DISPATCH: dict[int, tuple[Handler, bool]] = {
    0xCA: (status.get_data, False),
    0xCB: (status.get_data, False),
    0xF2: (status.get_status, True),
    0xE6: (content.install, True),
    0xE8: (content.load, True),
    0xE4: (content.delete, True),
    0xF0: (keys.set_status, True),
    0xE2: (keys.store_data, True),
    0xD8: (keys.put_key, True),
    0xEA: (upgrade.manage_elf_upgrade, True),  # MANAGE ELF UPGRADE (Amendment H)
}


class Card:
    """One emulated GP 2.3.1 card. ``on_change(state)`` is called before a response leaves the
    card whenever the command changed persistent state (the adapters write the state file there)."""

    def __init__(
        self,
        state: State,
        on_change: Callable[[State], None] | None = None,
        random: Callable[[int], bytes] = os.urandom,
        today: Callable[[], dt.date] = _utc_today,
    ) -> None:
        check_state(state)
        self.state = state
        self._on_change = on_change
        self._random = random
        self._today = today  # the date SCP11 certificates are checked against
        self._dirty = False
        self.powered = False
        self.last_error: str | None = None  # diagnostics: the internal error behind the last 6F00
        self._clear_volatile()

    # ------------------------------------------------------------------ power, reset, transmit

    def _clear_volatile(self) -> None:
        self.selected = ISD  # GP 2.3.1 §6.3: the ISD is the default selected application
        self.channel: SecureChannel | None = None
        self.channel_kvn: int | None = None
        self.scp11_pending: CardSCP11 | None = None  # an SCP11 handshake under way (OCE chain)
        self.scp11_pending_sd: str | None = None
        self.status_cursor: tuple[int, int, list[bytes]] | None = None
        self.perso_target: str | None = None
        self.store_next_block = 0
        self.perso_pending = b""  # STORE DATA blocks for perso_target until the last one (volatile)

    def power_on(self) -> bytes:
        """Cold reset: returns the ATR. An in-progress LOAD is discarded (the card was pulled)."""
        self._clear_volatile()
        self.powered = True
        if self.state.get("load") is not None:
            self.state["load"] = None  # GP 2.3.1 §9.3.5: an incomplete Load File is never registered
            self._dirty = True
            self._flush()
        return unhx(self.state["atr"])

    def reset(self) -> bytes:
        """Warm reset: same as a power cycle for this card (session and selection are volatile)."""
        return self.power_on()

    def power_off(self) -> None:
        self._clear_volatile()
        self.powered = False

    @property
    def atr(self) -> bytes:
        return unhx(self.state["atr"])

    def personalization(self, aid: str | bytes) -> bytes | None:
        """Read-only: the personalisation an instance keeps (:func:`cardsim.state.personalization`)."""
        return personalization(self.state, aid)

    def transmit(self, capdu: bytes) -> bytes:
        """Process one command APDU and return the response APDU (data || SW1 SW2). Never raises."""
        if not self.powered:
            self.power_on()
        snapshot = _snapshot(self.state)
        try:
            out = self._process(bytes(capdu))
        except _Reply as reply:
            out = _sw(reply.sw)
        except Exception as exc:  # a card never crashes: undo the command, answer "no precise diagnosis"
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.state = snapshot
            self._dirty = False
            self._end_session()
            return _sw(SW.NO_PRECISE_DIAGNOSIS)
        if not self._flush():
            self.state = snapshot
            return _sw(SW.MEMORY_FAILURE)
        return out

    def _flush(self) -> bool:
        if not self._dirty:
            return True
        self._dirty = False
        if self._on_change is not None:
            try:
                self._on_change(self.state)
            except OSError:
                return False
        return True

    def _changed(self) -> None:
        self._dirty = True

    # ------------------------------------------------------------------ helpers

    @property
    def _apps(self) -> dict[str, Record]:
        return self.state["apps"]

    @property
    def _elfs(self) -> dict[str, Record]:
        return self.state["elfs"]

    @property
    def _sds(self) -> dict[str, Record]:
        return self.state["sds"]

    def _privileges(self, aid: str) -> Privileges:
        return Privileges.from_bytes(unhx(self._apps[aid]["privileges"]))

    def _is_sd(self, aid: str) -> bool:
        return aid in self._apps and Privileges.SECURITY_DOMAIN in self._privileges(aid)

    def _end_session(self) -> None:
        """Secure channel session ends (GP 2.3.1 §10.2.3): also drops a LOAD in progress."""
        self.channel = None
        self.channel_kvn = None
        self.status_cursor = None
        self.perso_target = None
        self.store_next_block = 0
        self.perso_pending = b""
        self._abort_load()

    def _abort_load(self) -> None:
        if self.state.get("load") is not None:
            self.state["load"] = None
            self._changed()

    def _memory_used(self) -> int:
        used: int = sum(e["size"] for e in self._elfs.values() if not e["rom"])
        used += sum(INSTANCE_COST * (2 if self._is_sd(a) else 1) for a in self._apps if a != ISD)
        used += sum(len(app.get("perso") or "") // 2 for app in self._apps.values())
        used += len(self.perso_pending)
        used += upgrade.memory_held(self, INSTANCE_COST)
        load = self.state.get("load")
        if load is not None:
            used += len(load["data"]) // 2
        return used

    def _free(self) -> int:
        return self.state["memory_total"] - self._memory_used()

    def _require_session(self) -> None:
        if self.channel is None or not self.channel.is_authenticated:
            # GP 2.3.1 §11.1.2: card content management needs a secure channel
            raise _Reply(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _management_mode(self) -> str:
        """How the selected SD may manage card content (GP 2.3.1 §9.1): isd, am, dm — else 6982."""
        if self.selected == ISD:
            return "isd"
        priv = self._privileges(self.selected)
        if Privileges.AUTHORIZED_MANAGEMENT in priv:
            return "am"
        if Privileges.DELEGATED_MANAGEMENT in priv:
            return "dm"
        raise _Reply(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _require_card_open(self) -> None:
        # GP 2.3.1 §5.1.1.4: in CARD_LOCKED no card content changes; TERMINATED is final.
        if self.state["lifecycle"] in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED):
            raise _Reply(SW.CONDITIONS_NOT_SATISFIED)

    def _visible(self, owner_sd: str) -> bool:
        """An SD manages only content associated with it; the ISD (and Global Registry) sees all."""
        if self.selected == ISD:
            return True
        return owner_sd == self.selected

    def _check_token(self, plain: bytes) -> None:
        """Delegated Management (GP 2.3.1 §9.2.2, §C.3): a token signed by the card issuer."""
        try:
            token_data, token = dm.extract_token(plain)
        except GPError as exc:
            raise _Reply(SW.WRONG_DATA) from exc
        if not token:
            raise _Reply(SW.SECURITY_STATUS_NOT_SATISFIED)
        record = self._sds[ISD]["keys"].get(kvn_key(TOKEN_KVN))
        if record is None:
            raise _Reply(SW.CONDITIONS_NOT_SATISFIED)  # no token verification key: DM cannot be used
        scheme = self.state["token_scheme"]
        if (record["type"] == "rsa") != scheme.startswith("rsa"):  # key replaced by PUT KEY with another type
            scheme = dm.SCHEME_RSA_PKCS1V15_SHA256 if record["type"] == "rsa" else dm.SCHEME_ECDSA_P256_SHA256
        try:
            ok = dm.verify_token(load_public_key(record), token_data, token, scheme=scheme)
        except GPError:
            ok = False
        if not ok:
            raise _Reply(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _confirmation(self, mode: str, make: Callable[[bytes, bytes], bytes]) -> bytes:
        """Receipt for a DM operation (GP 2.3.1 §C.4) or ``00`` when none is due."""
        record = self._sds[ISD]["keys"].get(kvn_key(RECEIPT_KVN))
        if mode != "dm" or record is None:
            return b"\x00"
        self.state["confirmation_counter"] = (self.state["confirmation_counter"] + 1) & 0xFFFF
        counter = self.state["confirmation_counter"].to_bytes(2, "big")
        cud = dm.card_unique_data(unhx(self.state["iin"]), unhx(self.state["cin"]))
        receipt = dm.compute_receipt(unhx(record["keys"][0]), make(counter, cud), alg=record["type"])
        self._changed()
        return dm.build_confirmation(receipt, counter, cud)

    # ------------------------------------------------------------------ dispatch

    def _process(self, raw: bytes) -> bytes:
        if len(raw) < 4:
            return _sw(SW.WRONG_LENGTH)
        try:
            cmd = CommandAPDU.from_bytes(raw)
        except GPError:
            return _sw(SW.WRONG_LENGTH)
        cla = cmd.cla
        if cla == 0xFF or (not cla & 0x40 and cla & 0x20):
            return _sw(SW.CLA_NOT_SUPPORTED)  # ISO 7816-4 §5.4.1: invalid class
        logical_channel = 4 + (cla & 0x0F) if cla & 0x40 else cla & 0x03
        if logical_channel:
            return _sw(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)  # only the basic logical channel
        if cmd.ins == 0xA4:
            if cla & 0x80:
                return _sw(SW.CLA_NOT_SUPPORTED)
            return select.select(self, cmd)
        if cmd.ins == 0x70:  # MANAGE CHANNEL
            return _sw(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        lifecycle = self.state["lifecycle"]
        if lifecycle == CardLifeCycle.TERMINATED and cmd.ins != 0xCA:
            return _sw(SW.FUNCTION_NOT_SUPPORTED)  # GP 2.3.1 §5.1.1.5
        if not self._is_sd(self.selected):
            return applets.applet(self, cmd)
        if self._scp11_handshake(cmd):
            return channel.scp11_handshake(self, raw, cmd)
        if cmd.ins == 0x50:
            return channel.initialize_update(self, raw, cmd)
        if cmd.ins == 0x82:
            return channel.external_authenticate(self, raw)
        plain = raw
        secured = bool(cla & 0x04)
        if self.channel is not None:
            try:
                plain = self.channel.unwrap_command(raw)
            except GPError as exc:
                self._end_session()  # GP 2.3.1 §10.2.3: any secure messaging error ends the session
                return _sw(sw_for_error(exc))
        elif secured:
            return _sw(SW.SECURITY_STATUS_NOT_SATISFIED)
        cmd = CommandAPDU.from_bytes(plain)
        if self.state.get("load") is not None and cmd.ins not in (0xE8, 0xCA, 0xF2):
            self._abort_load()  # a LOAD sequence must not be interleaved with other management
        try:
            self._check_scp11_session(cmd, plain)
            out = self._dispatch(cmd, plain)
        except _Reply as reply:
            out = _sw(reply.sw)
        if self.channel is not None and self.channel.is_authenticated:
            out = self.channel.wrap_response(out)
        return out

    def _scp11_handshake(self, cmd: CommandAPDU) -> bool:
        """PSO, INTERNAL AUTHENTICATE, and MUTUAL AUTHENTICATE (INS 82 naming a key in P2, where
        SCP03's EXTERNAL AUTHENTICATE has P2 00) on an SD with SCP11 keys (Amd F §7)."""
        if "scp11" not in self._sds[self.selected]:
            return False
        if cmd.ins == Ins.MUTUAL_AUTHENTICATE:
            return cmd.p2 != 0x00
        return cmd.ins in (Ins.PERFORM_SECURITY_OPERATION, Ins.INTERNAL_AUTHENTICATE)

    def _check_scp11_session(self, cmd: CommandAPDU, plain: bytes) -> None:
        """What an SCP11 session may carry: SCP11c refuses PUT KEY, SET STATUS and DELETE of a key
        (Amd F §3.1.3); SCP11b, with no authenticated off-card entity, changes an SD only until it
        is personalised (our card's policy, docs/scp11.md: the SSD's first keys go in this way)."""
        session = self.channel
        if not isinstance(session, CardSCP11):
            return
        if not session.allows(plain):
            raise _Reply(SW.CONDITIONS_NOT_SATISFIED)
        if session.variant is SCP11Variant.B and cmd.ins in _CONTENT_CHANGING_INS:
            personalised = (
                self.state["lifecycle"] >= CardLifeCycle.SECURED
                if self.selected == ISD
                else self._apps[self.selected]["lifecycle"] & 0x7F >= SecurityDomainLifeCycle.PERSONALIZED
            )
            if personalised:
                raise _Reply(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _dispatch(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        entry = DISPATCH.get(cmd.ins)
        if entry is None:
            return _sw(SW.INS_NOT_SUPPORTED)
        handler, gp_class_only = entry
        if gp_class_only and not cmd.cla & 0x80:
            return _sw(SW.CLA_NOT_SUPPORTED)  # GP commands use the proprietary class (GP 2.3.1 §11.1.4)
        return handler(self, cmd, plain)


_IMMUTABLE = (str, int, float, bool, type(None), bytes)


def _snapshot(value: Any) -> Any:
    """A deep copy of the card's JSON-shaped state, taken before every command so that a failed
    one leaves the card as it was: dicts and lists copied, immutable leaves shared (several times
    faster than ``copy.deepcopy``, which keeps a memo for shapes this state never has)."""
    if isinstance(value, dict):
        return {key: item if isinstance(item, _IMMUTABLE) else _snapshot(item) for key, item in value.items()}
    if isinstance(value, list):
        return [item if isinstance(item, _IMMUTABLE) else _snapshot(item) for item in value]
    if isinstance(value, _IMMUTABLE):
        return value
    return copy.deepcopy(value)
