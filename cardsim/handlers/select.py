"""SELECT (GP 2.3.1 §11.9): application selection, the FCI and Card Recognition Data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardsim.constants import DEFAULT_SCP03, MAX_BLOCK
from cardsim.handlers import channel
from cardsim.handlers.common import ISD, _ok, _sw
from cardsim.state import hx, unhx
from gp.apdu import SW, CommandAPDU
from gp.commands import LOCKED_BIT, ApplicationLifeCycle, CardLifeCycle
from gp.tlv import encode_tlv

if TYPE_CHECKING:
    from cardsim.card import Card

_GP_OID = bytes.fromhex("2A864886FC6B")  # 1.2.840.114283 (globalPlatform)


# ------------------------------------------------------------------ SELECT (§11.9)


def _selectable(card: Card, aid: str) -> bool:
    app = card._apps[aid]
    if aid == ISD:
        return True
    if card.state["lifecycle"] in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED):
        return False  # GP 2.3.1 §5.1.1.4: only the ISD is selectable on a locked card
    lc = app["lifecycle"]
    return not lc & LOCKED_BIT and lc & ApplicationLifeCycle.SELECTABLE == ApplicationLifeCycle.SELECTABLE


def select(card: Card, cmd: CommandAPDU) -> bytes:
    if cmd.p1 != 0x04:
        return _sw(SW.INCORRECT_P1P2)  # selection by DF name only
    if cmd.p2 not in (0x00, 0x02, 0x0C, 0x0E):
        return _sw(SW.INCORRECT_P1P2)
    prefix = cmd.data
    if not prefix:
        target: str = ISD  # §11.9.2.3: empty AID selects the ISD
    else:
        text = hx(prefix)
        matches = [a for a in card._apps if a.startswith(text)]
        candidates = [a for a in matches if _selectable(card, a)]
        if not candidates:
            locked = any(card._apps[a]["lifecycle"] & LOCKED_BIT for a in matches) or (
                matches and card.state["lifecycle"] in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED)
            )
            return _sw(SW.FUNCTION_NOT_SUPPORTED if locked else SW.FILE_NOT_FOUND)  # §11.9.3.2
        target = candidates[0]
        if cmd.p2 & 0x02 and card.selected in candidates:  # next occurrence after the current one
            idx = candidates.index(card.selected) + 1
            if idx >= len(candidates):
                return _sw(SW.FILE_NOT_FOUND)
            target = candidates[idx]
    if card.state["lifecycle"] == CardLifeCycle.TERMINATED and target != ISD:
        return _sw(SW.FUNCTION_NOT_SUPPORTED)
    card._end_session()  # selecting an application ends the current secure channel session
    card.scp11_pending = None  # and any SCP11 handshake under way
    card.selected = target
    if cmd.p2 & 0x0C == 0x0C:
        return _ok()
    return _ok(_fci(card, target))


def card_recognition_data(card: Card, sd: str) -> bytes:
    """Card Recognition Data template ``73`` (GP 2.3.1 §H.2): CRD OID, GP 2.3.1, SCP and i."""
    info = card._sds[sd]

    def oid(suffix: bytes) -> bytes:
        return encode_tlv(0x06, _GP_OID + suffix)

    body = oid(b"\x01") + encode_tlv(0x60, oid(bytes((0x02, 0x02, 0x03, 0x01))))
    body += encode_tlv(0x63, oid(b"\x03"))
    if info["scp"] != 0x11:
        body += encode_tlv(0x64, oid(bytes((0x04, info["scp"], info["i"]))))
    elif channel.default_kvn(card, sd) is not None:  # an SCP11 SD that was given SCP03 keys
        body += encode_tlv(0x64, oid(bytes((0x04, *DEFAULT_SCP03))))
    if "scp11" in info:  # one 64 per protocol the SD speaks (Amd F §5.1: SCP11 OID 2A864886FC6B04 11 i)
        body += encode_tlv(0x64, oid(bytes((0x04, 0x11, info["scp11"]["i"]))))
    return encode_tlv(0x73, body)


def _fci(card: Card, aid: str) -> bytes:
    if card._is_sd(aid):
        lc = card.state["lifecycle"] if aid == ISD else card._apps[aid]["lifecycle"]
        a5 = (
            card_recognition_data(card, aid)
            + encode_tlv(0x9F6E, bytes((lc,)))
            + encode_tlv(0x9F65, bytes((MAX_BLOCK,)))
        )
        return encode_tlv(0x6F, encode_tlv(0x84, unhx(aid)) + encode_tlv(0xA5, a5))
    return encode_tlv(0x6F, encode_tlv(0x84, unhx(aid)))
