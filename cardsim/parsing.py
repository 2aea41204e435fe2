"""Card-side parsing of command data fields, in the card's error terms.

INSTALL and DELETE data are decoded by `gp.commands` (shared with the host side); the rest here.

Each parser raises :class:`ParseError` on malformed data; the card answers ``6A80``.
Field layouts: GP Card Spec 2.3.1 §11.5.2.3 (INSTALL), §11.2.2.3 (DELETE), §11.4.2.2 (GET STATUS),
§11.6.2.3 (LOAD data), §11.11.2.3 (STORE DATA, DGI format).
"""

from __future__ import annotations

from dataclasses import dataclass

from gp import commands
from gp.errors import GPError
from gp.tlv import Tlv, decode_all, decode_length, decode_one


class ParseError(Exception):
    """Malformed command data (→ 6A80)."""


InstallData = commands.InstallCommand
DeleteData = commands.DeleteCommand


def parse_install(p1: int, data: bytes) -> InstallData:
    """INSTALL data by P1 (Tables 11-43 .. 11-48), decoded by :func:`gp.commands.parse_install`."""
    try:
        return commands.parse_install(p1, data)
    except GPError as exc:
        raise ParseError(str(exc)) from exc


def parse_tlvs(data: bytes) -> list[Tlv]:
    try:
        return decode_all(data)
    except GPError as exc:
        raise ParseError(str(exc)) from exc


def parse_delete(data: bytes) -> DeleteData:
    """DELETE data (Tables 11-23, 11-24), decoded by :func:`gp.commands.parse_delete`."""
    try:
        return commands.parse_delete(data)
    except GPError as exc:
        raise ParseError(str(exc)) from exc


@dataclass(frozen=True)
class StatusQuery:
    aid_prefix: bytes = b""
    lifecycle: int | None = None


def parse_get_status(data: bytes) -> StatusQuery:
    """GET STATUS search criteria: ``4F <AID prefix>`` [``9F70`` life cycle] [``5C`` tag list]."""
    objs = parse_tlvs(data)
    prefix = b""
    lifecycle = None
    seen_4f = False
    for t in objs:
        if t.tag == 0x4F:
            prefix, seen_4f = t.value, True
        elif t.tag == 0x9F70 and len(t.value) in (1, 2):
            lifecycle = t.value[0]
        elif t.tag == 0x5C:
            continue  # tag list: the card returns its default set of tags
        else:
            raise ParseError(f"unexpected search criterion {t.tag:X}")
    if not seen_4f:
        raise ParseError("GET STATUS needs an AID search criterion (4F)")
    return StatusQuery(prefix, lifecycle)


def split_load_stream(stream: bytes) -> tuple[list[Tlv], int, int] | None:
    """Locate the LFDB in LOAD data ``[E2 DAP blocks] C4 <len> <LFDB>`` (§11.6.2.3).

    Returns (DAP blocks, offset of the LFDB, its declared length), or None while the header is
    still incomplete. Raises ParseError when the data cannot be a LOAD stream.
    """
    pos = 0
    daps: list[Tlv] = []
    while pos < len(stream) and stream[pos] == 0xE2:
        try:
            tlv, pos = decode_one(stream, pos)
        except GPError:
            return None  # DAP block not complete yet
        daps.append(tlv)
    if pos >= len(stream):
        return None
    if stream[pos] != 0xC4:
        raise ParseError("LOAD data must start with E2 (DAP) or C4 (Load File Data Block)")
    try:
        n, off = decode_length(stream, pos + 1)
    except GPError as exc:
        if len(stream) - pos < 6:
            return None
        raise ParseError(str(exc)) from exc
    return daps, off, n


def parse_dgis(data: bytes) -> list[tuple[int, bytes]]:
    """STORE DATA in DGI format: 2-byte DGI, length 1 byte or ``FF`` + 2 bytes (§11.11.2.3)."""
    out = []
    pos = 0
    while pos < len(data):
        if pos + 3 > len(data):
            raise ParseError("truncated DGI")
        dgi = int.from_bytes(data[pos : pos + 2], "big")
        n = data[pos + 2]
        pos += 3
        if n == 0xFF:
            if pos + 2 > len(data):
                raise ParseError("truncated DGI length")
            n = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        value = data[pos : pos + n]
        if len(value) != n:
            raise ParseError("truncated DGI value")
        out.append((dgi, value))
        pos += n
    return out
