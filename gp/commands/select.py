"""SELECT (GPC 2.3.1 §11.9) and the File Control Information it returns."""

from __future__ import annotations

from dataclasses import dataclass

from gp.commands._fields import _apdu, _check_aid
from gp.commands.card_data import CardData, parse_card_data
from gp.commands.constants import CLA_ISO, INS_SELECT
from gp.errors import TLVError
from gp.tlv import decode_all, find


def select(aid: bytes = b"", *, next_occurrence: bool = False) -> bytes:
    """SELECT by AID: ``00 A4 04 P2 Lc AID 00`` (§11.9.2; P2 ``00`` first, ``02`` next occurrence).

    An empty AID selects the Issuer Security Domain (§11.9.2.3).
    """
    aid = _check_aid(aid, allow_empty=True)
    return _apdu(CLA_ISO, INS_SELECT, 0x04, 0x02 if next_occurrence else 0x00, aid, le=256)


@dataclass(frozen=True)
class FCI:
    """File Control Information returned by SELECT (§11.9.3.1)."""

    aid: bytes
    max_command_data_length: int | None = None  # 9F65
    application_production_lifecycle: bytes | None = None  # 9F6E
    sd_management_data: bytes | None = None  # 73 (value)
    proprietary: bytes = b""  # A5 (value)
    card_data: CardData | None = None  # 73 decoded like GET DATA 66


def parse_fci(data: bytes) -> FCI:
    """Parse ``6F { 84 AID, A5 { [73 ...], [9F6E ...], 9F65 ... } }``."""
    objs = decode_all(data)
    fci = find(objs, 0x6F)
    if fci is None or not fci.constructed:
        raise TLVError("SELECT response is not an FCI template (tag 6F)")
    aid_tlv = fci.find(0x84)
    if aid_tlv is None:
        raise TLVError("FCI without AID (tag 84)")
    a5 = fci.find(0xA5)
    max_len = lifecycle = sdm = None
    proprietary = b""
    card_data = None
    if a5 is not None:
        proprietary = a5.value
        if not a5.constructed:
            raise TLVError("FCI proprietary data (A5) must be constructed")
        t = a5.find(0x9F65)
        if t is not None:
            if not 1 <= len(t.value) <= 4:
                raise TLVError("9F65 (max command data length) must be 1..4 bytes")
            max_len = int.from_bytes(t.value, "big")
        t = a5.find(0x9F6E)
        lifecycle = t.value if t is not None else None
        t = a5.find(0x73)
        if t is not None:
            sdm = t.value
            card_data = parse_card_data(t.encode())
    return FCI(aid_tlv.value, max_len, lifecycle, sdm, proprietary, card_data)
