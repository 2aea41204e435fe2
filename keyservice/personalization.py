"""Personalisation through the bank's channel (issue 18, docs/keyservice.md "store_data").

The platform hands the service an envelope the bank's back office sealed (gp.sealed) to the
token's ``perso`` key for one card and one instance. The service opens it in the token and turns
the data into INSTALL [for personalization] for the instance (GPC 2.3.1 §11.5.2.3.6, P1 ``20``)
then STORE DATA blocks (§11.11), which the channel wraps with C-DEC: the data leaves the service
only encrypted for the card. Nothing here logs, returns or keeps the data.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from gp import commands
from gp.commands import constants as k
from gp.errors import GPError
from gp.tlv import decode_one

#: STORE DATA P1 b5-b4, the structure of the data (GPC 2.3.1 §11.11.2.1, Table 11-92).
FORMATS = {"raw": 0x00, "dgi": k.STORE_DATA_DGI, "ber-tlv": k.STORE_DATA_BER}
BLOCK_SIZE = 200  # plain bytes per STORE DATA block (under the channel's own limit, 239 for SCP03)
MAX_BLOCKS = 256  # P2 is the block number, 00..FF (§11.11.2.2)
MAX_ENVELOPE = 64 * 1024


class PersonalizationError(ValueError):
    """A store_data request the service cannot serve; the message names why, never the data."""


@dataclass(frozen=True)
class StoreDataItem:
    instance: bytes
    envelope: bytes
    format: str
    #: One block of the sequence (the platform sends INSTALL [for personalization] itself and asks
    #: for the STORE DATA blocks one item each, so every item is one APDU); None: the whole sequence.
    block: int | None = None
    block_size: int = BLOCK_SIZE


def parse_item(spec: object) -> StoreDataItem:
    """``{"instance": AID hex, "sealed": base64 envelope, "format": "raw" | "dgi" | "ber-tlv"}``."""
    if not isinstance(spec, dict) or not set(spec) <= {"instance", "sealed", "format", "block", "block_size"}:
        raise PersonalizationError("store_data is {'instance': hex, 'sealed': base64, 'format': 'raw'|'dgi'|'ber-tlv'}")
    instance, sealed, fmt = spec.get("instance"), spec.get("sealed"), spec.get("format", "raw")
    try:
        aid = bytes.fromhex(instance) if isinstance(instance, str) else b""
    except ValueError:
        aid = b""
    if not 5 <= len(aid) <= 16:
        raise PersonalizationError("store_data 'instance' must be an AID: 5..16 bytes hex")
    if fmt not in FORMATS:
        raise PersonalizationError(f"store_data 'format' must be one of {', '.join(FORMATS)}")
    if not isinstance(sealed, str) or not sealed or len(sealed) > MAX_ENVELOPE * 4 // 3 + 4:
        raise PersonalizationError(f"store_data 'sealed' must be a base64 envelope of at most {MAX_ENVELOPE} bytes")
    try:  # standard or URL-safe alphabet, padded
        envelope = base64.b64decode(sealed.replace("-", "+").replace("_", "/").encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise PersonalizationError("store_data 'sealed' is not base64") from None
    block, block_size = spec.get("block"), spec.get("block_size", BLOCK_SIZE)
    if block is not None and (not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < MAX_BLOCKS):
        raise PersonalizationError(f"store_data 'block' must be a block number 0..{MAX_BLOCKS - 1}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or not 16 <= block_size <= BLOCK_SIZE:
        raise PersonalizationError(f"store_data 'block_size' must be 16..{BLOCK_SIZE}")
    if block is not None and fmt != "raw":
        raise PersonalizationError("store_data by 'block' is for the raw format only")
    return StoreDataItem(aid, envelope, str(fmt), block, block_size)


def _items(data: bytes, fmt: str) -> list[bytes]:
    """The data cut into whole DGIs (2-byte tag, length 1 byte or ``FF`` + 2 bytes, §11.11.2.3)
    or whole BER-TLV objects, so that no block ends inside one."""
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        start = offset
        if fmt == "dgi":
            if offset + 3 > len(data):
                raise PersonalizationError("the data is not a sequence of DGIs (a DGI header is cut short)")
            length, offset = data[offset + 2], offset + 3
            if length == 0xFF:
                if offset + 2 > len(data):
                    raise PersonalizationError("the data is not a sequence of DGIs (a DGI length is cut short)")
                length, offset = int.from_bytes(data[offset : offset + 2], "big"), offset + 2
            offset += length
            if offset > len(data):
                raise PersonalizationError("the data is not a sequence of DGIs (a DGI runs past the end)")
        else:
            try:
                _, offset = decode_one(data, offset)
            except GPError:
                raise PersonalizationError("the data is not a sequence of BER-TLV objects") from None
        out.append(data[start:offset])
    return out


def blocks(data: bytes, fmt: str, block_size: int = BLOCK_SIZE) -> list[bytes]:
    """The STORE DATA blocks: ``raw`` cut every ``block_size`` bytes; ``dgi`` and ``ber-tlv``
    packed whole objects per block (an object longer than a block is refused)."""
    if not data:
        raise PersonalizationError("the sealed data is empty: nothing to store")
    if fmt == "raw":
        out = [data[i : i + block_size] for i in range(0, len(data), block_size)]
    else:
        out = []
        current = b""
        for item in _items(data, fmt):
            if len(item) > block_size:
                raise PersonalizationError(
                    f"a {fmt.upper()} object of {len(item)} bytes does not fit one STORE DATA block ({block_size})"
                )
            if len(current) + len(item) > block_size:
                out.append(current)
                current = b""
            current += item
        out.append(current)
    if len(out) > MAX_BLOCKS:
        raise PersonalizationError(f"the data needs {len(out)} STORE DATA blocks; at most {MAX_BLOCKS}")
    return out


def personalization_commands(instance: bytes, data: bytes, fmt: str, block_size: int = BLOCK_SIZE) -> list[bytes]:
    """INSTALL [for personalization] of ``instance`` (§11.5.2.3.6), then STORE DATA blocks
    numbered from 00, the last with P1 b8 set (§11.11.2.1), P1 b5-b4 the format."""
    return [
        commands.install_for_personalization(instance),
        *commands.store_data_commands(blocks(data, fmt, block_size), flags=FORMATS[fmt]),
    ]
