"""DELETE (GPC 2.3.1 §11.2, with the card side's parser), SET STATUS (§11.10), STORE DATA (§11.11)
and PUT KEY (§11.8)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gp.commands._fields import _apdu, _check_aid
from gp.commands.constants import (
    CLA_GP,
    INS_DELETE,
    INS_PUT_KEY,
    INS_SET_STATUS,
    INS_STORE_DATA,
    SET_STATUS_APP,
    SET_STATUS_ISD,
    SET_STATUS_SD_AND_APPS,
    SHORT_MAX_DATA,
    STORE_DATA_LAST,
)
from gp.errors import EncodingError, InvalidCommandError
from gp.tlv import Tlv, decode_all, encode_tlv


@dataclass(frozen=True)
class DeleteCommand:
    """DELETE data as the card sees it (§11.2.2.3): an AID, or key identifier / version, and a token."""

    aid: bytes = b""
    key_id: int | None = None
    kvn: int | None = None
    token: bytes = b""


def parse_delete(data: bytes) -> DeleteCommand:
    """Card side: decode DELETE data (``4F`` AID or ``D0``/``D2`` key references, optional ``9E`` token)."""
    objs = decode_all(data)
    tags = [t.tag for t in objs]
    if len(set(tags)) != len(tags) or not set(tags) <= {0x4F, 0xD0, 0xD2, 0x9E}:
        raise EncodingError(f"DELETE data with unexpected or repeated tags {[f'{t:X}' for t in tags]}")
    found = {t.tag: t.value for t in objs}
    if 0x4F in found and (0xD0 in found or 0xD2 in found):
        raise EncodingError("DELETE data mixes an object AID and key references")
    if 0x4F not in found and 0xD0 not in found and 0xD2 not in found:
        raise EncodingError("DELETE data names nothing to delete")
    for tag in (0xD0, 0xD2):
        if tag in found and len(found[tag]) != 1:
            raise EncodingError(f"DELETE key reference {tag:X} must be one byte")
    if 0x4F in found and not 5 <= len(found[0x4F]) <= 16:
        raise EncodingError(f"DELETE AID of {len(found[0x4F])} bytes (ISO/IEC 7816-5: 5..16)")
    return DeleteCommand(
        aid=found.get(0x4F, b""),
        key_id=found[0xD0][0] if 0xD0 in found else None,
        kvn=found[0xD2][0] if 0xD2 in found else None,
        token=found.get(0x9E, b""),
    )


def delete_data(aid: bytes) -> bytes:
    """DELETE data without token: ``4F <AID>`` (§11.2.2.3)."""
    return encode_tlv(0x4F, _check_aid(aid))


def delete(aid: bytes, *, related: bool = False, token: bytes = b"") -> bytes:
    """DELETE an ELF/application/SD: ``80 E4 00 P2 4F <AID> [9E <token>]``; P2 ``80`` deletes related
    objects too (an ELF with its applications, an SD with its content) (§11.2.2.2)."""
    data = delete_data(aid)
    if token:
        data += encode_tlv(0x9E, token)  # Delete Token (§11.2.2.3)
    return _apdu(CLA_GP, INS_DELETE, 0x00, 0x80 if related else 0x00, data, le=256)


def delete_key(*, kvn: int | None = None, key_id: int | None = None) -> bytes:
    """DELETE key: ``D0 <key id>`` and/or ``D2 <key version number>`` (§11.2.2.3)."""
    data = b""
    if key_id is not None:
        data += encode_tlv(0xD0, bytes([key_id & 0xFF]))
    if kvn is not None:
        data += encode_tlv(0xD2, bytes([kvn & 0xFF]))
    if not data:
        raise InvalidCommandError("DELETE key needs a key identifier and/or a key version number")
    return _apdu(CLA_GP, INS_DELETE, 0x00, 0x00, data, le=256)


def set_status(p1: int, state: int, aid: bytes = b"") -> bytes:
    """SET STATUS ``80 F0 P1 P2 [AID]`` (§11.10.2): P1 ``80`` card (ISD, no AID), ``40`` application
    or SD, ``60`` SD and its associated applications; P2 the new life cycle state (card: e.g. ``7F``
    CARD_LOCKED; application/SD: ``80`` to lock, ``00`` to unlock, or an application-specific state)."""
    if p1 not in (SET_STATUS_ISD, SET_STATUS_APP, SET_STATUS_SD_AND_APPS):
        raise InvalidCommandError(f"SET STATUS P1 must be 80, 40 or 60, got {p1:02X}")
    if not 0 <= state <= 0xFF:
        raise InvalidCommandError("life cycle state must be a byte")
    data = _check_aid(aid, allow_empty=p1 == SET_STATUS_ISD)
    if p1 == SET_STATUS_ISD and data:
        raise InvalidCommandError("SET STATUS for the card (P1 80) carries no AID")
    return _apdu(CLA_GP, INS_SET_STATUS, p1, state, data)


def store_data(block: bytes, block_number: int, *, last: bool, flags: int = 0) -> bytes:
    """One STORE DATA ``80 E2 P1 P2`` (§11.11.2): P1 b8 last block, b7-b6 encryption, b5-b4 format
    (``flags`` from STORE_DATA_*), P2 the block number."""
    if not 0 <= block_number <= 0xFF:
        raise InvalidCommandError(f"STORE DATA block number {block_number} is not a byte")
    if flags & ~0x7F:
        raise InvalidCommandError("flags must not set the last-block bit; use last=")
    p1 = flags | (STORE_DATA_LAST if last else 0)
    return _apdu(CLA_GP, INS_STORE_DATA, p1, block_number, block, le=256)


def store_data_commands(
    data: bytes | Sequence[bytes], *, max_block: int = SHORT_MAX_DATA, flags: int = 0
) -> list[bytes]:
    """STORE DATA sequence: ``data`` is split into blocks of ``max_block``, or given as a list of
    blocks (e.g. one DGI/TLV each); block numbers from 0, last-block bit on the last one."""
    if isinstance(data, bytes | bytearray):
        if not 1 <= max_block <= SHORT_MAX_DATA:
            raise InvalidCommandError(f"max_block must be 1..{SHORT_MAX_DATA}")
        raw = bytes(data)
        blocks = [raw[i : i + max_block] for i in range(0, len(raw), max_block)] or [b""]
    else:
        blocks = [bytes(b) for b in data]
    if not blocks or len(blocks) > 256:
        raise InvalidCommandError(f"STORE DATA needs 1..256 blocks, got {len(blocks)}")
    return [store_data(b, i, last=i == len(blocks) - 1, flags=flags) for i, b in enumerate(blocks)]


def put_key(new_kvn: int, key_data: bytes, *, old_kvn: int = 0x00, key_id: int = 0x01, multiple: bool = True) -> bytes:
    """PUT KEY ``80 D8 P1 P2 <new KVN> <key data fields> 00`` (§11.8.2).

    P1 = KVN being replaced (``00`` adds a new key set); P2 = first key identifier, b8 set when
    several keys follow. ``key_data`` comes already encoded (``gp.keys``).
    """
    for name, v in (("new_kvn", new_kvn), ("old_kvn", old_kvn)):
        if not 0 <= v <= 0x7F:
            raise InvalidCommandError(f"{name} must be 0..7F, got {v:#x}")
    if not 0 <= key_id <= 0x7F:
        raise InvalidCommandError(f"key_id must be 0..7F, got {key_id:#x}")
    p2 = key_id | (0x80 if multiple else 0)
    return _apdu(CLA_GP, INS_PUT_KEY, old_kvn, p2, bytes([new_kvn]) + bytes(key_data), le=256)


def parse_tlv_response(data: bytes) -> list[Tlv]:
    """Convenience: decode any BER-TLV response."""
    return decode_all(data)
