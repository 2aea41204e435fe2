"""GET DATA (GP 2.3.1 §11.3) and GET STATUS (§11.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardsim import scp11
from cardsim.constants import GET_STATUS_CHUNK
from cardsim.handlers import channel, select
from cardsim.handlers.common import ISD, _ok, _sw
from cardsim.parsing import ParseError, parse_get_status, parse_tlvs
from cardsim.state import hx, kvn_key, unhx
from gp.apdu import SW, CommandAPDU
from gp.commands import ExecutableLoadFileLifeCycle, Privileges
from gp.commands.upgrade import TAG_CARD_CAPABILITIES, card_capabilities
from gp.keys import (
    KEY_TYPE_AES,
    KEY_TYPE_DES,
    KEY_TYPE_EC_PARAM_REF,
    KEY_TYPE_EC_PUBLIC,
    KEY_TYPE_RSA_E,
    KEY_TYPE_RSA_N,
)
from gp.tlv import encode_tlv

if TYPE_CHECKING:
    from cardsim.card import Card


# ------------------------------------------------------------------ GET DATA (§11.3)


def _key_information(card: Card, sd: str) -> bytes:
    """Key Information Template ``E0`` (§11.3.3.1): one ``C0`` per key component."""
    out = b""
    for kvn_text, rec in card._sds[sd]["keys"].items():
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
            out += encode_tlv(0xC0, bytes((1, kvn, KEY_TYPE_EC_PUBLIC, len(rec["q"]) // 2, KEY_TYPE_EC_PARAM_REF, 1)))
    out += scp11.key_information(card._sds[sd])
    return encode_tlv(0xE0, out)


def _certificate_store(card: Card, sd: str, data: bytes) -> bytes:
    """GET DATA BF21 (Amd F §7.4.2): the certificate store of the SD key named by
    ``A6 { 83 { KID KVN } }``, or of its SCP11b key when the command names none."""
    kid = kvn = None
    if data:
        try:
            control = parse_tlvs(data)
            inner = parse_tlvs(control[0].value) if len(control) == 1 and control[0].tag == 0xA6 else []
        except ParseError:
            return _sw(SW.WRONG_DATA)
        if len(inner) != 1 or inner[0].tag != 0x83 or len(inner[0].value) != 2:
            return _sw(SW.WRONG_DATA)
        kid, kvn = inner[0].value[0], inner[0].value[1]
    store = scp11.certificate_store(card._sds[sd], kid, kvn)
    if store is None:
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    return _ok(store)


def get_data(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    tag = (cmd.p1 << 8) | cmd.p2
    sd = card.selected
    app_data = card._apps[sd].get("data", {})
    if f"{tag:X}" in app_data:  # personalised by STORE DATA
        return _ok(encode_tlv(tag, unhx(app_data[f"{tag:X}"])))
    if tag == 0x9F7F and sd == ISD:
        return _ok(encode_tlv(0x9F7F, unhx(card.state["cplc"])))
    if tag == TAG_CARD_CAPABILITIES:  # which optional features the card has (gp.commands.upgrade)
        return _ok(card_capabilities(elf_upgrade=bool(card.state.get("elf_upgrade", False))))
    if tag == 0x0066:
        return _ok(encode_tlv(0x66, select.card_recognition_data(card, sd)))
    if tag == 0x00E0:
        return _ok(_key_information(card, sd))
    if tag == 0xBF21:
        return _certificate_store(card, sd, cmd.data)
    if tag == 0x0042 and sd == ISD:
        return _ok(encode_tlv(0x42, unhx(card.state["iin"])))
    if tag == 0x0045 and sd == ISD:
        return _ok(encode_tlv(0x45, unhx(card.state["cin"])))
    if tag == 0x00CF:
        return _ok(encode_tlv(0xCF, unhx(card.state["kdd"])))
    if tag == 0x00C1:
        kvn = channel.default_kvn(card, sd)
        if kvn is None:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        width = 2 if card._sds[sd]["scp"] == 0x02 else 3
        counter = card._sds[sd]["keys"][kvn_key(kvn)]["counter"]
        return _ok(encode_tlv(0xC1, counter.to_bytes(width, "big")))
    return _sw(SW.REFERENCED_DATA_NOT_FOUND)


# ------------------------------------------------------------------ GET STATUS (§11.4)


def get_status(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    card._require_session()
    if cmd.p1 not in (0x80, 0x40, 0x20, 0x10) or cmd.p2 & ~0x03:
        return _sw(SW.INCORRECT_P1P2)
    tagged = bool(cmd.p2 & 0x02)
    if cmd.p2 & 0x01:  # next occurrence (after 6310)
        cursor = card.status_cursor
        if cursor is None or cursor[0] != cmd.p1 or cursor[1] != cmd.p2 & 0x02:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        entries = cursor[2]
    else:
        try:
            query = parse_get_status(cmd.data)
        except ParseError:
            return _sw(SW.WRONG_DATA)
        entries = _status_entries(card, cmd.p1, query.aid_prefix, query.lifecycle, tagged)
        if not entries:
            card.status_cursor = None
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # no entry matches the search criteria
    out = b""
    rest = list(entries)
    while rest and (not out or len(out) + len(rest[0]) <= GET_STATUS_CHUNK):
        out += rest.pop(0)
    if rest:
        card.status_cursor = (cmd.p1, cmd.p2 & 0x02, rest)
        return out + _sw(SW.WARNING_MORE_DATA)
    card.status_cursor = None
    return _ok(out)


def _status_entries(card: Card, p1: int, prefix: bytes, lifecycle: int | None, tagged: bool) -> list[bytes]:
    global_registry = card.selected == ISD or Privileges.GLOBAL_REGISTRY in card._privileges(card.selected)
    text = hx(prefix)
    out: list[bytes] = []

    def visible(owner: str, aid: str) -> bool:
        return global_registry or owner == card.selected or aid == card.selected

    if p1 in (0x80, 0x40):
        for aid, app in card._apps.items():
            if (aid == ISD) != (p1 == 0x80) or not aid.startswith(text) or not visible(app["sd"], aid):
                continue
            lc = card.state["lifecycle"] if aid == ISD else app["lifecycle"]
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
    for aid, elf in card._elfs.items():
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
