"""The emulated GlobalPlatform card: ``Card.transmit(capdu) -> rapdu`` over a JSON state (no I/O).

Section numbers refer to GlobalPlatform Card Specification v2.3.1 (GPC_SPE_034) unless noted;
Amd D is the SCP03 amendment. The persistent state layout is described in :mod:`cardsim.state`;
what lives only while powered (selection, secure channel session, GET STATUS cursor,
personalisation target) is volatile and lost on reset, as on a real card.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cardsim.applets import AppletContext, find_behaviour
from cardsim.constants import (
    GET_STATUS_CHUNK,
    INSTANCE_COST,
    ISSUER_ONLY_PRIVILEGES,
    MAX_BLOCK,
    RECEIPT_KVN,
    TOKEN_KVN,
)
from cardsim.parsing import (
    InstallData,
    ParseError,
    parse_delete,
    parse_dgis,
    parse_get_status,
    parse_install,
    parse_tlvs,
    split_load_stream,
)
from cardsim.state import (
    Record,
    State,
    check_state,
    hx,
    kvn_key,
    load_public_key,
    public_key_record,
    static_keys,
    symmetric_record,
    unhx,
)
from gp import dm
from gp.aids import ISD_AID, SSD_MODULE_AID
from gp.apdu import SW, CommandAPDU
from gp.cap import LoadFile
from gp.commands import (
    LOCKED_BIT,
    ApplicationLifeCycle,
    CardLifeCycle,
    ExecutableLoadFileLifeCycle,
    Privileges,
    SecurityDomainLifeCycle,
)
from gp.errors import EncodingError, GPError, KeyMaterialError
from gp.keys import (
    KEY_TYPE_AES,
    KEY_TYPE_DES,
    KEY_TYPE_EC_PARAM_REF,
    KEY_TYPE_EC_PUBLIC,
    KEY_TYPE_RSA_E,
    KEY_TYPE_RSA_N,
    decode_put_key,
    kcv_aes,
    kcv_des,
    scp02_decrypt_key,
    scp03_decrypt_key,
)
from gp.scp.card import CardSCP02, CardSCP03, sw_for_error
from gp.tlv import decode_all, encode_tlv, find

ISD = hx(ISD_AID)
_HASH_BY_LENGTH = {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}
_GP_OID = bytes.fromhex("2A864886FC6B")  # 1.2.840.114283 (globalPlatform)


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _ok(data: bytes = b"") -> bytes:
    return bytes(data) + b"\x90\x00"


class _Reply(Exception):
    def __init__(self, sw: int) -> None:
        self.sw = sw
        super().__init__(f"{sw:04X}")


def _hash_alg(length: int) -> str:
    alg = _HASH_BY_LENGTH.get(length)
    if alg is None:
        raise _Reply(SW.WRONG_DATA)
    return alg


class Card:
    """One emulated GP 2.3.1 card. ``on_change(state)`` is called before a response leaves the
    card whenever the command changed persistent state (the adapters write the state file there)."""

    def __init__(
        self,
        state: State,
        on_change: Callable[[State], None] | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        check_state(state)
        self.state = state
        self._on_change = on_change
        self._random = random
        self._dirty = False
        self.powered = False
        self.last_error: str | None = None  # diagnostics: the internal error behind the last 6F00
        self._clear_volatile()

    # ------------------------------------------------------------------ power, reset, transmit

    def _clear_volatile(self) -> None:
        self.selected = ISD  # GP 2.3.1 §6.3: the ISD is the default selected application
        self.channel: CardSCP02 | CardSCP03 | None = None
        self.channel_kvn: int | None = None
        self.status_cursor: tuple[int, int, list[bytes]] | None = None
        self.perso_target: str | None = None
        self.store_next_block = 0

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

    def transmit(self, capdu: bytes) -> bytes:
        """Process one command APDU and return the response APDU (data || SW1 SW2). Never raises."""
        if not self.powered:
            self.power_on()
        snapshot = copy.deepcopy(self.state)
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
        self._abort_load()

    def _abort_load(self) -> None:
        if self.state.get("load") is not None:
            self.state["load"] = None
            self._changed()

    def _memory_used(self) -> int:
        used: int = sum(e["size"] for e in self._elfs.values() if not e["rom"])
        used += sum(INSTANCE_COST * (2 if self._is_sd(a) else 1) for a in self._apps if a != ISD)
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
        channel = 4 + (cla & 0x0F) if cla & 0x40 else cla & 0x03
        if channel:
            return _sw(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)  # only the basic logical channel
        if cmd.ins == 0xA4:
            if cla & 0x80:
                return _sw(SW.CLA_NOT_SUPPORTED)
            return self._select(cmd)
        if cmd.ins == 0x70:  # MANAGE CHANNEL
            return _sw(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        lifecycle = self.state["lifecycle"]
        if lifecycle == CardLifeCycle.TERMINATED and cmd.ins != 0xCA:
            return _sw(SW.FUNCTION_NOT_SUPPORTED)  # GP 2.3.1 §5.1.1.5
        if not self._is_sd(self.selected):
            return self._applet(cmd)
        if cmd.ins == 0x50:
            return self._initialize_update(raw, cmd)
        if cmd.ins == 0x82:
            return self._external_authenticate(raw)
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
            out = self._dispatch(cmd, plain)
        except _Reply as reply:
            out = _sw(reply.sw)
        if self.channel is not None and self.channel.is_authenticated:
            out = self.channel.wrap_response(out)
        return out

    def _dispatch(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        gp_class = bool(cmd.cla & 0x80)
        handlers: dict[int, Callable[[CommandAPDU, bytes], bytes]] = {
            0xF2: self._get_status,
            0xE6: self._install,
            0xE8: self._load,
            0xE4: self._delete,
            0xF0: self._set_status,
            0xE2: self._store_data,
            0xD8: self._put_key,
        }
        if cmd.ins in (0xCA, 0xCB):
            return self._get_data(cmd)
        handler = handlers.get(cmd.ins)
        if handler is None:
            return _sw(SW.INS_NOT_SUPPORTED)
        if not gp_class:
            return _sw(SW.CLA_NOT_SUPPORTED)  # GP commands use the proprietary class (GP 2.3.1 §11.1.4)
        return handler(cmd, plain)

    # ------------------------------------------------------------------ SELECT (§11.9)

    def _selectable(self, aid: str) -> bool:
        app = self._apps[aid]
        if aid == ISD:
            return True
        if self.state["lifecycle"] in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED):
            return False  # GP 2.3.1 §5.1.1.4: only the ISD is selectable on a locked card
        lc = app["lifecycle"]
        return not lc & LOCKED_BIT and lc & ApplicationLifeCycle.SELECTABLE == ApplicationLifeCycle.SELECTABLE

    def _select(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x04:
            return _sw(SW.INCORRECT_P1P2)  # selection by DF name only
        if cmd.p2 not in (0x00, 0x02, 0x0C, 0x0E):
            return _sw(SW.INCORRECT_P1P2)
        prefix = cmd.data
        if not prefix:
            target: str = ISD  # §11.9.2.3: empty AID selects the ISD
        else:
            text = hx(prefix)
            matches = [a for a in self._apps if a.startswith(text)]
            candidates = [a for a in matches if self._selectable(a)]
            if not candidates:
                locked = any(self._apps[a]["lifecycle"] & LOCKED_BIT for a in matches) or (
                    matches and self.state["lifecycle"] in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED)
                )
                return _sw(SW.FUNCTION_NOT_SUPPORTED if locked else SW.FILE_NOT_FOUND)  # §11.9.3.2
            target = candidates[0]
            if cmd.p2 & 0x02 and self.selected in candidates:  # next occurrence after the current one
                idx = candidates.index(self.selected) + 1
                if idx >= len(candidates):
                    return _sw(SW.FILE_NOT_FOUND)
                target = candidates[idx]
        if self.state["lifecycle"] == CardLifeCycle.TERMINATED and target != ISD:
            return _sw(SW.FUNCTION_NOT_SUPPORTED)
        self._end_session()  # selecting an application ends the current secure channel session
        self.selected = target
        if cmd.p2 & 0x0C == 0x0C:
            return _ok()
        return _ok(self._fci(target))

    def _card_recognition_data(self, sd: str) -> bytes:
        """Card Recognition Data template ``73`` (GP 2.3.1 §H.2): CRD OID, GP 2.3.1, SCP and i."""
        info = self._sds[sd]

        def oid(suffix: bytes) -> bytes:
            return encode_tlv(0x06, _GP_OID + suffix)

        body = oid(b"\x01") + encode_tlv(0x60, oid(bytes((0x02, 0x02, 0x03, 0x01))))
        body += encode_tlv(0x63, oid(b"\x03")) + encode_tlv(0x64, oid(bytes((0x04, info["scp"], info["i"]))))
        return encode_tlv(0x73, body)

    def _fci(self, aid: str) -> bytes:
        if self._is_sd(aid):
            lc = self.state["lifecycle"] if aid == ISD else self._apps[aid]["lifecycle"]
            a5 = (
                self._card_recognition_data(aid)
                + encode_tlv(0x9F6E, bytes((lc,)))
                + encode_tlv(0x9F65, bytes((MAX_BLOCK,)))
            )
            return encode_tlv(0x6F, encode_tlv(0x84, unhx(aid)) + encode_tlv(0xA5, a5))
        return encode_tlv(0x6F, encode_tlv(0x84, unhx(aid)))

    # ------------------------------------------------------------------ applets

    def _applet(self, cmd: CommandAPDU) -> bytes:
        app = self._apps[self.selected]
        elf = self._elfs.get(app["elf"], {})
        aids = [unhx(self.selected), unhx(app["module"]), unhx(app["elf"])]
        behaviour = find_behaviour(self.state.get("behaviours", {}), aids)
        if behaviour is None:
            return _sw(SW.INS_NOT_SUPPORTED)
        ctx = AppletContext(aids[0], aids[1], aids[2], tuple(elf.get("version", (0, 0))))
        out = behaviour(ctx, cmd)
        return out if len(out) >= 2 else _sw(SW.NO_PRECISE_DIAGNOSIS)

    # ------------------------------------------------------------------ secure channel (§11.13, §11.11 / Amd D §7)

    def _default_kvn(self, sd: str) -> int | None:
        info = self._sds[sd]
        kind = "des" if info["scp"] == 0x02 else "aes"
        for kvn, rec in info["keys"].items():
            if rec["type"] == kind and len(rec["keys"]) == 3:
                return int(kvn, 16)
        return None

    def _initialize_update(self, raw: bytes, cmd: CommandAPDU) -> bytes:
        self._end_session()  # INITIALIZE UPDATE starts a new session (the old one ends)
        if not cmd.cla & 0x80:
            return _sw(SW.CLA_NOT_SUPPORTED)
        info = self._sds[self.selected]
        kvn = cmd.p1 or self._default_kvn(self.selected)
        rec = info["keys"].get(kvn_key(kvn)) if kvn is not None else None
        if kvn is None or rec is None or rec["type"] not in ("aes", "des") or len(rec["keys"]) != 3:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # §11.13.3: key set not found
        if rec["failures"] >= self.state["auth_limit"]:
            return _sw(SW.AUTHENTICATION_METHOD_BLOCKED)  # the key set is blocked after too many failed authentications
        keys = static_keys(rec, kvn)
        kdd = unhx(self.state["kdd"])
        channel: CardSCP02 | CardSCP03
        try:
            if info["scp"] == 0x02:
                if rec["type"] != "des":
                    return _sw(SW.REFERENCED_DATA_NOT_FOUND)
                channel = CardSCP02(
                    keys,
                    i=info["i"],
                    sd_aid=unhx(self.selected),
                    sequence_counter=rec["counter"],
                    kdd=kdd,
                    card_challenge_random=self._random,
                )
            else:
                if rec["type"] != "aes":
                    return _sw(SW.REFERENCED_DATA_NOT_FOUND)
                s16 = len(cmd.data) == 16  # Amd D §7.1.1: a 16-byte host challenge selects S16 mode
                channel = CardSCP03(
                    keys,
                    s16=s16,
                    i=info["i"] | (0x01 if s16 else 0),
                    sd_aid=unhx(self.selected),
                    sequence_counter=rec["counter"],
                    kdd=kdd,
                    card_challenge_random=self._random,
                )
        except GPError:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        out = channel.initialize_update(raw)
        if out[-2:] == b"\x90\x00":
            self.channel, self.channel_kvn = channel, kvn
            if channel.sequence_counter != rec["counter"]:
                rec["counter"] = channel.sequence_counter
                self._changed()
        return out

    def _external_authenticate(self, raw: bytes) -> bytes:
        channel, kvn = self.channel, self.channel_kvn
        if channel is None or kvn is None:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # §11.11.3: no INITIALIZE UPDATE before
        out = channel.external_authenticate(raw)
        rec = self._sds[self.selected]["keys"][kvn_key(kvn)]
        if out == b"\x90\x00":
            if rec["failures"]:
                rec["failures"] = 0
                self._changed()
            return out
        self._end_session()
        if out in (b"\x63\x00", b"\x69\x82"):
            # A wrong host cryptogram (or C-MAC) counts against the key set; at the limit it is blocked.
            rec["failures"] += 1
            self._changed()
        return out

    # ------------------------------------------------------------------ GET DATA (§11.3)

    def _key_information(self, sd: str) -> bytes:
        """Key Information Template ``E0`` (§11.3.3.1): one ``C0`` per key component."""
        out = b""
        for kvn_text, rec in self._sds[sd]["keys"].items():
            kvn = int(kvn_text, 16)
            if rec["type"] in ("aes", "des"):
                ktype = KEY_TYPE_AES if rec["type"] == "aes" else KEY_TYPE_DES
                for idx, key in enumerate(rec["keys"], start=1):
                    out += encode_tlv(0xC0, bytes((idx, kvn, ktype, len(key) // 2)))
            elif rec["type"] == "rsa":
                n_len, e_len = len(rec["n"]) // 2, len(rec["e"]) // 2
                out += encode_tlv(
                    0xC0,
                    bytes((1, kvn, 0xFF, KEY_TYPE_RSA_N))
                    + n_len.to_bytes(2, "big")
                    + bytes((0xFF, KEY_TYPE_RSA_E))
                    + e_len.to_bytes(2, "big")
                    + b"\x00\x00",
                )
            else:
                out += encode_tlv(
                    0xC0, bytes((1, kvn, KEY_TYPE_EC_PUBLIC, len(rec["q"]) // 2, KEY_TYPE_EC_PARAM_REF, 1))
                )
        return encode_tlv(0xE0, out)

    def _get_data(self, cmd: CommandAPDU) -> bytes:
        tag = (cmd.p1 << 8) | cmd.p2
        sd = self.selected
        app_data = self._apps[sd].get("data", {})
        if f"{tag:X}" in app_data:  # personalised by STORE DATA
            return _ok(encode_tlv(tag, unhx(app_data[f"{tag:X}"])))
        if tag == 0x9F7F and sd == ISD:
            return _ok(encode_tlv(0x9F7F, unhx(self.state["cplc"])))
        if tag == 0x0066:
            return _ok(encode_tlv(0x66, self._card_recognition_data(sd)))
        if tag == 0x00E0:
            return _ok(self._key_information(sd))
        if tag == 0x0042 and sd == ISD:
            return _ok(encode_tlv(0x42, unhx(self.state["iin"])))
        if tag == 0x0045 and sd == ISD:
            return _ok(encode_tlv(0x45, unhx(self.state["cin"])))
        if tag == 0x00CF:
            return _ok(encode_tlv(0xCF, unhx(self.state["kdd"])))
        if tag == 0x00C1:
            kvn = self._default_kvn(sd)
            if kvn is None:
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)
            width = 2 if self._sds[sd]["scp"] == 0x02 else 3
            counter = self._sds[sd]["keys"][kvn_key(kvn)]["counter"]
            return _ok(encode_tlv(0xC1, counter.to_bytes(width, "big")))
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)

    # ------------------------------------------------------------------ GET STATUS (§11.4)

    def _get_status(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        self._require_session()
        if cmd.p1 not in (0x80, 0x40, 0x20, 0x10) or cmd.p2 & ~0x03:
            return _sw(SW.INCORRECT_P1P2)
        tagged = bool(cmd.p2 & 0x02)
        if cmd.p2 & 0x01:  # next occurrence (after 6310)
            cursor = self.status_cursor
            if cursor is None or cursor[0] != cmd.p1 or cursor[1] != cmd.p2 & 0x02:
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)
            entries = cursor[2]
        else:
            try:
                query = parse_get_status(cmd.data)
            except ParseError:
                return _sw(SW.WRONG_DATA)
            entries = self._status_entries(cmd.p1, query.aid_prefix, query.lifecycle, tagged)
            if not entries:
                self.status_cursor = None
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # no entry matches the search criteria
        out = b""
        rest = list(entries)
        while rest and (not out or len(out) + len(rest[0]) <= GET_STATUS_CHUNK):
            out += rest.pop(0)
        if rest:
            self.status_cursor = (cmd.p1, cmd.p2 & 0x02, rest)
            return out + _sw(SW.WARNING_MORE_DATA)
        self.status_cursor = None
        return _ok(out)

    def _status_entries(self, p1: int, prefix: bytes, lifecycle: int | None, tagged: bool) -> list[bytes]:
        global_registry = self.selected == ISD or Privileges.GLOBAL_REGISTRY in self._privileges(self.selected)
        text = hx(prefix)
        out: list[bytes] = []

        def visible(owner: str, aid: str) -> bool:
            return global_registry or owner == self.selected or aid == self.selected

        if p1 in (0x80, 0x40):
            for aid, app in self._apps.items():
                if (aid == ISD) != (p1 == 0x80) or not aid.startswith(text) or not visible(app["sd"], aid):
                    continue
                lc = self.state["lifecycle"] if aid == ISD else app["lifecycle"]
                if lifecycle is not None and lc != lifecycle:
                    continue
                priv = unhx(app["privileges"])
                if tagged:
                    body = encode_tlv(0x4F, unhx(aid)) + encode_tlv(0x9F70, bytes((lc,))) + encode_tlv(0xC5, priv)
                    if aid != ISD:
                        body += encode_tlv(0xC4, unhx(app["elf"])) + encode_tlv(0xCC, unhx(app["sd"]))
                    out.append(encode_tlv(0xE3, body))
                else:
                    out.append(bytes((len(aid) // 2,)) + unhx(aid) + bytes((lc, priv[0])))
            return out
        for aid, elf in self._elfs.items():
            if not aid.startswith(text) or not visible(elf["sd"], aid):
                continue
            if lifecycle is not None and lifecycle != ExecutableLoadFileLifeCycle.LOADED:
                continue
            modules = [unhx(m["aid"]) for m in elf["modules"]]
            if tagged:
                body = encode_tlv(0x4F, unhx(aid)) + encode_tlv(0x9F70, bytes((ExecutableLoadFileLifeCycle.LOADED,)))
                body += encode_tlv(0xCE, bytes(elf["version"]))
                if p1 == 0x10:
                    body += b"".join(encode_tlv(0x84, m) for m in modules)
                body += encode_tlv(0xCC, unhx(elf["sd"]))
                out.append(encode_tlv(0xE3, body))
            else:
                entry = bytes((len(aid) // 2,)) + unhx(aid) + bytes((ExecutableLoadFileLifeCycle.LOADED, 0))
                if p1 == 0x10:
                    entry += bytes((len(modules),)) + b"".join(bytes((len(m),)) + m for m in modules)
                out.append(entry)
        return out

    # ------------------------------------------------------------------ INSTALL (§11.5)

    def _install(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        self._require_session()
        self._require_card_open()
        kind = cmd.p1 & 0x7E
        if cmd.p2 != 0x00 or cmd.p1 & 0x81 or kind not in (0x02, 0x04, 0x0C, 0x08, 0x10, 0x20, 0x40):
            return _sw(SW.INCORRECT_P1P2)
        try:
            data = parse_install(cmd.p1, cmd.data)
        except ParseError:
            return _sw(SW.WRONG_DATA)
        if kind == 0x20:
            return self._install_for_personalization(data)
        mode = self._management_mode()
        if mode == "dm":
            self._check_token(plain)
        if kind == 0x02:
            return self._install_for_load(data, mode)
        if kind in (0x04, 0x0C):
            return self._install_for_install(data, mode, make_selectable=bool(cmd.p1 & 0x08))
        if kind == 0x08:
            return self._make_selectable(data)
        if kind == 0x10:
            return self._extradite(data, mode)
        return self._registry_update(data, mode)

    def _install_for_load(self, data: InstallData, mode: str) -> bytes:
        elf = hx(data.elf_aid)
        if elf in self._elfs or elf in self._apps:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # a Load File with this AID is already on the card
        target = hx(data.sd_aid) if data.sd_aid else self.selected
        if not self._is_sd(target):
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if mode != "isd" and target != self.selected:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # an SSD loads only into itself
        if data.lfdb_hash:
            _hash_alg(len(data.lfdb_hash))
        elif mode == "dm":
            return _sw(SW.WRONG_DATA)  # §C.3.1: the Load Token covers the LFDB hash, so it is mandatory
        free = self._free()
        if data.params:
            try:
                ef = find(decode_all(data.params), 0xEF)
                c6 = find(ef.children(), 0xC6) if ef is not None else None
            except GPError:
                return _sw(SW.WRONG_DATA)
            if c6 is not None and int.from_bytes(c6.value, "big") > free:
                return _sw(SW.NOT_ENOUGH_MEMORY)  # §11.5.3.2: the declared code size does not fit
        if free <= 0:
            return _sw(SW.NOT_ENOUGH_MEMORY)
        self.state["load"] = {
            "elf": elf,
            "sd": target,
            "by": self.selected,
            "hash": hx(data.lfdb_hash),
            "next": 0,
            "data": "",
            "mode": mode,
        }
        self._changed()
        return _ok(b"\x00")

    def _install_for_install(self, data: InstallData, mode: str, *, make_selectable: bool) -> bytes:
        elf_aid, module, app_aid = hx(data.elf_aid), hx(data.module_aid), hx(data.app_aid)
        elf = self._elfs.get(elf_aid)
        if elf is None or not (elf["rom"] or self._visible(elf["sd"])):
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # §11.5.3.2: ELF not found
        if module not in [m["aid"] for m in elf["modules"]]:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if app_aid in self._apps or app_aid in self._elfs:
            return _sw(SW.WRONG_DATA)  # the application AID is already in the registry
        priv = Privileges.from_bytes(data.privileges)
        is_sd = Privileges.SECURITY_DOMAIN in priv
        if is_sd != (module == hx(SSD_MODULE_AID)):
            return _sw(SW.WRONG_DATA)  # only the SSD module makes Security Domains (§7.2)
        if (Privileges.DELEGATED_MANAGEMENT in priv and Privileges.AUTHORIZED_MANAGEMENT in priv) or (
            not is_sd
            and priv
            & (Privileges.DELEGATED_MANAGEMENT | Privileges.AUTHORIZED_MANAGEMENT | Privileges.DAP_VERIFICATION)
        ):
            return _sw(SW.WRONG_DATA)  # §11.1.2: inconsistent privileges
        if mode != "isd" and priv & ISSUER_ONLY_PRIVILEGES:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # card-wide privileges stay with the issuer
        scp, i = self._sds[ISD]["scp"], self._sds[ISD]["i"]
        if data.params:
            try:
                objs = decode_all(data.params)
            except GPError:
                return _sw(SW.WRONG_DATA)
            c9 = find(objs, 0xC9)
            if c9 is None:
                return _sw(SW.WRONG_DATA)  # §11.5.2.3.7: C9 is mandatory in install parameters
            if is_sd and c9.value:
                try:
                    scp_param = find(decode_all(c9.value), 0x81)
                except GPError:
                    scp_param = None
                if scp_param is not None:
                    if len(scp_param.value) != 2 or scp_param.value[0] not in (0x02, 0x03):
                        return _sw(SW.WRONG_DATA)
                    scp, i = scp_param.value[0], scp_param.value[1]
        if self._free() < INSTANCE_COST * (2 if is_sd else 1):
            return _sw(SW.NOT_ENOUGH_MEMORY)
        owner = self.selected if elf["rom"] else elf["sd"]
        lifecycle = ApplicationLifeCycle.SELECTABLE if make_selectable else ApplicationLifeCycle.INSTALLED
        self._apps[app_aid] = {
            "elf": elf_aid,
            "module": module,
            "privileges": hx(priv.to_bytes()),
            "lifecycle": lifecycle,
            "sd": owner,
            "params": hx(data.params),
            "data": {},
        }
        if is_sd:
            # A new SSD gets the card's initial key set at the default KVN of its SCP (DESIGN §5.3:
            # its owner replaces it with PUT KEY in a session with the SSD).
            key = unhx(self.state["ssd_initial_key"])
            kind = "des" if scp == 0x02 else "aes"
            kvn = 0x20 if scp == 0x02 else 0x30
            self._sds[app_aid] = {"scp": scp, "i": i, "keys": {kvn_key(kvn): symmetric_record(kind, [key] * 3)}}
        self._changed()
        return _ok(self._confirmation(mode, lambda c, u: dm.install_receipt_data(c, u, data.elf_aid, data.app_aid)))

    def _owned_app(self, aid: str) -> dict[str, Any]:
        app = self._apps.get(aid)
        if app is None or aid == ISD or not self._visible(app["sd"]):
            raise _Reply(SW.REFERENCED_DATA_NOT_FOUND)
        return app

    def _make_selectable(self, data: InstallData) -> bytes:
        app = self._owned_app(hx(data.app_aid))
        if app["lifecycle"] != ApplicationLifeCycle.INSTALLED:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        app["lifecycle"] = ApplicationLifeCycle.SELECTABLE
        self._changed()
        return _ok(b"\x00")

    def _descendant_sds(self, sd: str) -> set[str]:
        out = {sd}
        grew = True
        while grew:
            grew = False
            for aid, app in self._apps.items():
                if aid not in out and aid != ISD and app["sd"] in out and self._is_sd(aid):
                    out.add(aid)
                    grew = True
        return out

    def _extradite(self, data: InstallData, mode: str) -> bytes:
        """INSTALL [for extradition] (§11.5.2.3.4): associate an application or ELF with another SD."""
        aid, target = hx(data.app_aid), hx(data.sd_aid)
        obj = self._apps.get(aid) or self._elfs.get(aid)
        if obj is None or aid == ISD or not self._visible(obj["sd"]):
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if obj.get("rom"):
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        if not self._is_sd(target):
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if self._is_sd(aid) and target in self._descendant_sds(aid):
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # an SD cannot be associated with itself or its own SDs
        old = obj["sd"]
        obj["sd"] = target
        self._changed()
        return _ok(
            self._confirmation(
                mode, lambda c, u: dm.extradition_receipt_data(c, u, unhx(old), data.app_aid, data.sd_aid)
            )
        )

    def _registry_update(self, data: InstallData, mode: str) -> bytes:
        """INSTALL [for registry update] (§11.5.2.3.5): privileges, parameters or association."""
        aid = hx(data.app_aid)
        app = self._owned_app(aid)
        old = app["sd"]
        if data.sd_aid:
            target = hx(data.sd_aid)
            if not self._is_sd(target):
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)
            if self._is_sd(aid) and target in self._descendant_sds(aid):
                return _sw(SW.CONDITIONS_NOT_SATISFIED)
        if data.privileges:
            priv = Privileges.from_bytes(data.privileges)
            if (Privileges.SECURITY_DOMAIN in priv) != self._is_sd(aid):
                return _sw(SW.WRONG_DATA)
            if mode != "isd" and priv & ISSUER_ONLY_PRIVILEGES:
                return _sw(SW.CONDITIONS_NOT_SATISFIED)
            app["privileges"] = hx(priv.to_bytes())
        if data.sd_aid:
            app["sd"] = hx(data.sd_aid)
        if data.params:
            app["params"] = hx(data.params)
        self._changed()
        return _ok(
            self._confirmation(
                mode,
                lambda c, u: dm.registry_update_receipt_data(
                    c, u, unhx(old), data.app_aid, unhx(app["sd"]), data.privileges, data.params
                ),
            )
        )

    def _install_for_personalization(self, data: InstallData) -> bytes:
        """INSTALL [for personalization] (§11.5.2.3.6): following STORE DATA go to that application."""
        aid = hx(data.app_aid)
        app = self._owned_app(aid)
        if app["lifecycle"] & LOCKED_BIT:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        self.perso_target = aid
        self.store_next_block = 0
        return _ok(b"\x00")

    # ------------------------------------------------------------------ LOAD (§11.6)

    def _load(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        self._require_session()
        load = self.state.get("load")
        if load is None or load["by"] != self.selected:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # LOAD without a preceding INSTALL [for load]
        if cmd.p1 not in (0x00, 0x80):
            self._abort_load()
            return _sw(SW.INCORRECT_P1P2)
        if cmd.p2 != load["next"]:
            self._abort_load()
            return _sw(SW.INCORRECT_P1P2)  # blocks must come in sequence from 00 (§11.6.2.2)
        if not cmd.data:
            self._abort_load()
            return _sw(SW.WRONG_LENGTH)
        stream = unhx(load["data"]) + cmd.data
        if len(cmd.data) > self._free():
            self._abort_load()
            return _sw(SW.NOT_ENOUGH_MEMORY)  # §11.6.3.2: not enough memory space
        try:
            header = split_load_stream(stream)
        except ParseError:
            self._abort_load()
            return _sw(SW.WRONG_DATA)
        if header is not None and len(stream) > header[1] + header[2]:
            self._abort_load()
            return _sw(SW.WRONG_DATA)  # more data than the C4 length announced
        if cmd.p1 == 0x00:
            load["data"] = hx(stream)
            load["next"] += 1
            self._changed()
            return _ok()
        return self._finish_load(load, stream, header)

    def _finish_load(self, load: dict[str, Any], stream: bytes, header: tuple[Any, int, int] | None) -> bytes:
        self._abort_load()  # whatever the outcome, the LOAD sequence is over
        if header is None or len(stream) != header[1] + header[2]:
            return _sw(SW.WRONG_DATA)
        lfdb = stream[header[1] :]
        if load["hash"]:
            expected = unhx(load["hash"])
            if hashlib.new(_hash_alg(len(expected)), lfdb).digest() != expected:
                return _sw(SW.WRONG_DATA)  # §C.2: LFDB hash differs from INSTALL [for load]
        try:
            lf = LoadFile.from_bytes(lfdb)
        except GPError:
            return _sw(SW.WRONG_DATA)
        if hx(lf.package_aid) != load["elf"]:
            return _sw(SW.WRONG_DATA)
        for imp in lf.imports:
            dep = self._elfs.get(hx(imp.aid))
            # Linking: same major version, minor version at least the imported one (JCVM §4.5.2).
            if dep is None or dep["version"][0] != imp.version[0] or dep["version"][1] < imp.version[1]:
                # GP 2.3.1 §11.6.3.2 lists only 6581/6A84 for LOAD itself; the missing object is a
                # package the Load File references, and GP answers 6A88 for a referenced AID absent
                # from the registry (INSTALL §11.5.3.2, DELETE §11.2.3.2): the same here.
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        for applet in lf.applets:
            if hx(applet.aid) in self._apps or hx(applet.aid) in self._elfs:
                return _sw(SW.WRONG_DATA)
        self._elfs[load["elf"]] = {
            "version": list(lf.package_version),
            "sd": load["sd"],
            "modules": [{"aid": hx(a.aid), "offset": a.install_method_offset} for a in lf.applets],
            "imports": [[hx(i.aid), i.version[0], i.version[1]] for i in lf.imports],
            "rom": False,
            "size": len(lfdb),
            "name": lf.package_name or "",
        }
        self._changed()
        return _ok(
            self._confirmation(
                load["mode"], lambda c, u: dm.load_receipt_data(c, u, unhx(load["elf"]), unhx(load["sd"]))
            )
        )

    # ------------------------------------------------------------------ DELETE (§11.2)

    def _delete(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        self._require_session()
        self._require_card_open()
        if cmd.p1 != 0x00 or cmd.p2 not in (0x00, 0x80):
            return _sw(SW.INCORRECT_P1P2)
        try:
            data = parse_delete(cmd.data)
        except ParseError:
            return _sw(SW.WRONG_DATA)
        if not data.aid:
            return self._delete_key(data.kvn, data.key_id)
        mode = self._management_mode()
        if mode == "dm":
            self._check_token(plain)
        aid = hx(data.aid)
        obj = self._apps.get(aid) or self._elfs.get(aid)
        if obj is None or not self._visible(obj["sd"]):
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if aid == ISD or obj.get("rom") or aid == self.selected:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # §11.2.2.1: the ISD and ROM content cannot be deleted
        apps, elfs = self._deletion_set(aid, related=cmd.p2 == 0x80)
        for other, elf in self._elfs.items():
            if other not in elfs and any(i[0] in elfs for i in elf["imports"]):
                return _sw(SW.CONDITIONS_NOT_SATISFIED)  # another Load File still imports it
        for other, app in self._apps.items():
            if other not in apps and (app["elf"] in elfs or app["sd"] in apps):
                return _sw(SW.CONDITIONS_NOT_SATISFIED)
        if self.selected in apps:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        for a in apps:
            del self._apps[a]
            self._sds.pop(a, None)
        if self.perso_target in apps:
            self.perso_target = None
        for e in elfs:
            del self._elfs[e]
        self._changed()
        return _ok(self._confirmation(mode, lambda c, u: dm.delete_receipt_data(c, u, data.aid)))

    def _deletion_set(self, aid: str, *, related: bool) -> tuple[set[str], set[str]]:
        """The object and, with P2 80, its related objects (§11.2.2.1): an ELF's applications,
        an SD's associated applications and Load Files (recursively). Without P2 80 an object
        with dependants is refused (6985)."""
        apps: set[str] = set()
        elfs: set[str] = set()
        todo = [aid]
        while todo:
            cur = todo.pop()
            if cur in self._elfs:
                if cur in elfs:
                    continue
                elfs.add(cur)
                children = [a for a, app in self._apps.items() if app["elf"] == cur]
            else:
                if cur in apps:
                    continue
                apps.add(cur)
                children = []
                if self._is_sd(cur):
                    children = [a for a, app in self._apps.items() if app["sd"] == cur and a != cur]
                    children += [e for e, elf in self._elfs.items() if elf["sd"] == cur]
            if children and not related:
                raise _Reply(SW.CONDITIONS_NOT_SATISFIED)
            todo.extend(children)
        if any(self._elfs[e]["rom"] for e in elfs) or ISD in apps:
            raise _Reply(SW.CONDITIONS_NOT_SATISFIED)
        return apps, elfs

    def _delete_key(self, kvn: int | None, key_id: int | None) -> bytes:
        keys = self._sds[self.selected]["keys"]
        if kvn is None or kvn_key(kvn) not in keys:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if key_id not in (None, 1):
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # keys are deleted as whole key sets
        del keys[kvn_key(kvn)]
        self._changed()
        return _ok(b"\x00")

    # ------------------------------------------------------------------ SET STATUS (§11.10)

    def _set_status(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        self._require_session()
        priv = self._privileges(self.selected)
        if cmd.p1 == 0x80:
            if cmd.data:
                return _sw(SW.WRONG_DATA)
            return self._set_card_state(cmd.p2, priv)
        if cmd.p1 not in (0x40, 0x60):
            return _sw(SW.INCORRECT_P1P2)
        aid = hx(cmd.data)
        if aid == ISD:
            return _sw(SW.WRONG_DATA)  # the ISD's state is the card's (P1 80)
        app = self._owned_app(aid)
        targets = [aid]
        if cmd.p1 == 0x60:
            if not self._is_sd(aid):
                return _sw(SW.WRONG_DATA)
            targets += [a for a, other in self._apps.items() if other["sd"] == aid and a not in (aid, ISD)]
        if cmd.p2 == LOCKED_BIT:  # lock
            for a in targets:
                self._apps[a]["lifecycle"] |= LOCKED_BIT
        elif cmd.p2 == 0x00:  # unlock
            if not app["lifecycle"] & LOCKED_BIT:
                return _sw(SW.CONDITIONS_NOT_SATISFIED)
            for a in targets:
                self._apps[a]["lifecycle"] &= ~LOCKED_BIT & 0xFF
        elif cmd.p2 == SecurityDomainLifeCycle.PERSONALIZED and cmd.p1 == 0x40 and self._is_sd(aid):
            if app["lifecycle"] != ApplicationLifeCycle.SELECTABLE:
                return _sw(SW.CONDITIONS_NOT_SATISFIED)  # §5.3.2: SELECTABLE → PERSONALIZED only
            app["lifecycle"] = SecurityDomainLifeCycle.PERSONALIZED
        else:
            return _sw(SW.WRONG_DATA)  # application specific states are the application's own business
        self._changed()
        return _ok()

    def _set_card_state(self, new: int, priv: Privileges) -> bytes:
        cur = self.state["lifecycle"]
        order = (CardLifeCycle.OP_READY, CardLifeCycle.INITIALIZED, CardLifeCycle.SECURED)
        isd = self.selected == ISD
        allowed = (
            (new == CardLifeCycle.TERMINATED and Privileges.CARD_TERMINATE in priv)
            or (new == CardLifeCycle.CARD_LOCKED and cur == CardLifeCycle.SECURED and Privileges.CARD_LOCK in priv)
            # §5.1.1.4: only the ISD unlocks
            or (new == CardLifeCycle.SECURED and cur == CardLifeCycle.CARD_LOCKED and isd)
            # §5.1.1: OP_READY → INITIALIZED → SECURED, never backwards
            or (cur in order and new in order and order.index(new) > order.index(cur) and isd)
        )
        if not allowed:
            lifecycle_change = new in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED, CardLifeCycle.SECURED)
            return _sw(SW.CONDITIONS_NOT_SATISFIED if lifecycle_change else SW.WRONG_DATA)
        self.state["lifecycle"] = new
        self._changed()
        return _ok()

    # ------------------------------------------------------------------ STORE DATA (§11.11)

    def _store_data(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        self._require_session()
        self._require_card_open()
        target = self.perso_target or self.selected
        if target not in self._apps:  # the application being personalised was deleted meanwhile
            self.perso_target = None
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if cmd.p2 != self.store_next_block:
            return _sw(SW.INCORRECT_P1P2)  # block numbers run from 00 in sequence
        fmt = cmd.p1 & 0x18
        try:
            if fmt == 0x08:
                items = [(f"{dgi:04X}", value) for dgi, value in parse_dgis(cmd.data)]
            elif fmt in (0x10, 0x00):
                items = [(f"{t.tag:X}", t.value) for t in parse_tlvs(cmd.data)]
            else:
                return _sw(SW.INCORRECT_P1P2)
        except ParseError:
            return _sw(SW.WRONG_DATA)
        store = self._apps[target].setdefault("data", {})
        for tag, value in items:
            store[tag] = hx(value)
        self._changed()
        if cmd.p1 & 0x80:  # last block
            self.store_next_block = 0
            self.perso_target = None
        else:
            self.store_next_block = (self.store_next_block + 1) & 0xFF
        return _ok()

    # ------------------------------------------------------------------ PUT KEY (§11.8)

    def _put_key(self, cmd: CommandAPDU, plain: bytes) -> bytes:
        self._require_session()
        self._require_card_open()
        channel = self.channel
        if channel is None:  # _require_session() has checked; this narrows the type
            raise _Reply(SW.SECURITY_STATUS_NOT_SATISFIED)
        info = self._sds[self.selected]
        keys = info["keys"]
        if not cmd.data or cmd.p1 & 0x80 or not cmd.p2 & 0x7F:
            return _sw(SW.INCORRECT_P1P2 if cmd.data else SW.WRONG_DATA)
        if isinstance(channel, CardSCP02):
            dek02 = channel.session_dek

            def decrypt(enc: bytes, n: int | None) -> bytes:
                return scp02_decrypt_key(dek02, enc)
        else:
            dek03 = channel.keys.dek

            def decrypt(enc: bytes, n: int | None) -> bytes:
                return scp03_decrypt_key(dek03, enc, n)

        try:
            put = decode_put_key(cmd.data, decrypt)
        except (EncodingError, KeyMaterialError):
            return _sw(SW.WRONG_DATA)  # malformed key data or a key check value that does not match
        new = put.new_version
        if new in (0x00, 0xFF) or not put.components:
            return _sw(SW.WRONG_DATA)
        record = self._key_record(put.components, info["scp"])
        old = cmd.p1
        if old == 0x00:
            if kvn_key(new) in keys:
                return _sw(SW.WRONG_DATA)  # adding a key set whose version already exists
        else:
            if kvn_key(old) not in keys:
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)
            if new != old and kvn_key(new) in keys:
                return _sw(SW.WRONG_DATA)
            del keys[kvn_key(old)]
        keys[kvn_key(new)] = record
        self._changed()
        kcvs = b""
        for comp in put.components:
            if comp.key_type == KEY_TYPE_AES:
                kcvs += kcv_aes(comp.value)
            elif comp.key_type == KEY_TYPE_DES:
                kcvs += kcv_des(comp.value)
        return _ok(bytes((new,)) + kcvs)  # §11.8.3.1: KVN followed by the key check values

    def _key_record(self, components: tuple[Any, ...], scp: int) -> dict[str, Any]:
        types = {c.key_type for c in components}
        if types <= {KEY_TYPE_AES, KEY_TYPE_DES}:
            if len(types) != 1 or len(components) not in (1, 3):
                raise _Reply(SW.WRONG_DATA)
            kind = "aes" if KEY_TYPE_AES in types else "des"
            if len(components) == 3 and kind != ("des" if scp == 0x02 else "aes"):
                raise _Reply(SW.WRONG_DATA)  # a secure channel key set must suit the SD's SCP
            lengths = {len(c.value) for c in components}
            if len(lengths) != 1:
                raise _Reply(SW.WRONG_DATA)
            return symmetric_record(kind, [c.value for c in components])
        by_type = {c.key_type: c.value for c in components}
        try:
            if types == {KEY_TYPE_RSA_N, KEY_TYPE_RSA_E}:
                n = int.from_bytes(by_type[KEY_TYPE_RSA_N], "big")
                e = int.from_bytes(by_type[KEY_TYPE_RSA_E], "big")
                return public_key_record(rsa.RSAPublicNumbers(e, n).public_key())
            if types == {KEY_TYPE_EC_PUBLIC, KEY_TYPE_EC_PARAM_REF} and by_type[KEY_TYPE_EC_PARAM_REF] == b"\x00":
                return public_key_record(
                    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), by_type[KEY_TYPE_EC_PUBLIC])
                )
        except (ValueError, GPError) as exc:
            raise _Reply(SW.WRONG_DATA) from exc
        raise _Reply(SW.WRONG_DATA)
