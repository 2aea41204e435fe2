"""Card-side parsers of command data fields that `gp` only builds (gp.commands is host side).

Each parser raises :class:`ParseError` on malformed data; the card answers ``6A80``.
Field layouts: GP Card Spec 2.3.1 §11.5.2.3 (INSTALL), §11.2.2.3 (DELETE), §11.4.2.2 (GET STATUS),
§11.6.2.3 (LOAD data), §11.11.2.3 (STORE DATA, DGI format).
"""

from __future__ import annotations

from dataclasses import dataclass

from gp.errors import GPError
from gp.tlv import Tlv, decode_all, decode_length, decode_one


class ParseError(Exception):
    """Malformed command data (→ 6A80)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = bytes(data), 0

    def lv(self, *, aid: bool = False, allow_empty: bool = True) -> bytes:
        """One-byte length + value (AIDs, privileges, hash)."""
        if self.pos >= len(self.data):
            raise ParseError("truncated data: length byte expected")
        n = self.data[self.pos]
        value = self.data[self.pos + 1 : self.pos + 1 + n]
        if len(value) != n:
            raise ParseError("truncated field")
        self.pos += 1 + n
        if aid and (value or not allow_empty) and not 5 <= n <= 16:
            raise ParseError(f"AID of {n} bytes (ISO/IEC 7816-5: 5..16)")
        return value

    def ber_lv(self) -> bytes:
        """BER length (1-3 bytes) + value (parameters and token fields, §11.5.2.3)."""
        try:
            n, pos = decode_length(self.data, self.pos)
        except GPError as exc:
            raise ParseError(str(exc)) from exc
        value = self.data[pos : pos + n]
        if len(value) != n:
            raise ParseError("truncated field")
        self.pos = pos + n
        return value

    def zero(self) -> None:
        if self.lv():
            raise ParseError("field must be empty (00)")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ParseError("trailing bytes after the last field")


@dataclass(frozen=True)
class InstallData:
    """The fields of any INSTALL variant (unused fields empty)."""

    elf_aid: bytes = b""
    module_aid: bytes = b""
    app_aid: bytes = b""
    sd_aid: bytes = b""
    privileges: bytes = b""
    params: bytes = b""
    lfdb_hash: bytes = b""
    token: bytes = b""


def _token(r: _Reader) -> bytes:
    # The token length field may be absent altogether in a command without a token.
    if r.pos == len(r.data):
        return b""
    tok = r.ber_lv()
    r.end()
    return tok


def parse_install(p1: int, data: bytes) -> InstallData:
    """Parse INSTALL data by P1 (Tables 11-43 .. 11-48)."""
    r = _Reader(data)
    kind = p1 & 0x7E
    if kind == 0x02:  # for load: ELF AID, SD AID, hash, load parameters, token
        elf = r.lv(aid=True, allow_empty=False)
        sd = r.lv(aid=True)
        h = r.lv()
        params = r.ber_lv()
        return InstallData(elf_aid=elf, sd_aid=sd, lfdb_hash=h, params=params, token=_token(r))
    if kind in (0x04, 0x0C):  # for install [and make selectable]
        elf = r.lv(aid=True, allow_empty=False)
        module = r.lv(aid=True, allow_empty=False)
        app = r.lv(aid=True, allow_empty=False)
        priv = r.lv()
        params = r.ber_lv()
        if len(priv) not in (1, 3):
            raise ParseError("privileges must be 1 or 3 bytes")
        return InstallData(elf_aid=elf, module_aid=module, app_aid=app, privileges=priv, params=params,
                           token=_token(r))
    if kind == 0x08:  # for make selectable: 00 00 AID privileges params token
        r.zero()
        r.zero()
        app = r.lv(aid=True, allow_empty=False)
        priv = r.lv()
        params = r.ber_lv()
        if len(priv) not in (1, 3):
            raise ParseError("privileges must be 1 or 3 bytes")
        return InstallData(app_aid=app, privileges=priv, params=params, token=_token(r))
    if kind == 0x10:  # for extradition: SD AID, 00, AID, 00, params, token
        sd = r.lv(aid=True, allow_empty=False)
        r.zero()
        app = r.lv(aid=True, allow_empty=False)
        r.zero()
        params = r.ber_lv()
        return InstallData(sd_aid=sd, app_aid=app, params=params, token=_token(r))
    if kind == 0x40:  # for registry update: SD AID (may be empty), 00, AID, privileges, params, token
        sd = r.lv(aid=True)
        r.zero()
        app = r.lv(aid=True, allow_empty=False)
        priv = r.lv()
        params = r.ber_lv()
        if len(priv) not in (0, 1, 3):
            raise ParseError("privileges must be empty, 1 or 3 bytes")
        return InstallData(sd_aid=sd, app_aid=app, privileges=priv, params=params, token=_token(r))
    if kind == 0x20:  # for personalization: 00 00 AID 00 00 00
        r.zero()
        r.zero()
        app = r.lv(aid=True, allow_empty=False)
        for _ in range(3):
            if r.pos < len(r.data):
                r.zero()
        r.end()
        return InstallData(app_aid=app)
    raise ParseError(f"INSTALL P1 {p1:02X} not supported")


def parse_tlvs(data: bytes) -> list[Tlv]:
    try:
        return decode_all(data)
    except GPError as exc:
        raise ParseError(str(exc)) from exc


@dataclass(frozen=True)
class DeleteData:
    aid: bytes = b""
    kvn: int | None = None
    key_id: int | None = None
    token: bytes = b""


def parse_delete(data: bytes) -> DeleteData:
    """DELETE data: ``4F AID [9E token]`` or key deletion ``D0 id`` / ``D2 KVN`` (Tables 11-23, 11-24)."""
    objs = parse_tlvs(data)
    aid = b""
    kvn = key_id = None
    token = b""
    for t in objs:
        if t.tag == 0x4F:
            if aid or not 5 <= len(t.value) <= 16:
                raise ParseError("one 4F with an AID of 5..16 bytes expected")
            aid = t.value
        elif t.tag == 0x9E:
            token = t.value
        elif t.tag in (0xD0, 0xD2) and len(t.value) == 1:
            if t.tag == 0xD0:
                key_id = t.value[0]
            else:
                kvn = t.value[0]
        elif t.tag == 0xB6:  # control reference template for DM (GP 2.2+), informative here
            continue
        else:
            raise ParseError(f"unexpected tag {t.tag:X} in DELETE data")
    if not aid and kvn is None and key_id is None:
        raise ParseError("DELETE data names neither an object nor a key")
    if aid and (kvn is not None or key_id is not None):
        raise ParseError("DELETE of an object and a key at once")
    return DeleteData(aid, kvn, key_id, token)


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
