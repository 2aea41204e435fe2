"""INSTALL (GPC 2.3.1 §11.5): the builders the host sends, and the parser the card side uses."""

from __future__ import annotations

from dataclasses import dataclass

from gp.commands._fields import _apdu, _check_aid, _lv, _lv_ber
from gp.commands.constants import (
    CLA_GP,
    INS_INSTALL,
    INSTALL_FOR_EXTRADITION,
    INSTALL_FOR_INSTALL,
    INSTALL_FOR_LOAD,
    INSTALL_FOR_MAKE_SELECTABLE,
    INSTALL_FOR_PERSONALIZATION,
    INSTALL_FOR_REGISTRY_UPDATE,
    SHORT_MAX_DATA,
)
from gp.commands.registry import Privileges, _privileges_bytes
from gp.errors import EncodingError, InvalidCommandError, TLVError
from gp.tlv import decode_length, encode_tlv


def load_parameters(
    *, nv_code: int | None = None, volatile_data: int | None = None, nv_data: int | None = None, extra: bytes = b""
) -> bytes:
    """Load parameters field: ``EF { C6 nv code, C7 volatile data, C8 nv data }`` (§11.5.2.3.7)."""
    sys = b""
    for tag, value in ((0xC6, nv_code), (0xC7, volatile_data), (0xC8, nv_data)):
        if value is not None:
            sys += encode_tlv(tag, _quota(value))
    sys += bytes(extra)
    return encode_tlv(0xEF, sys) if sys else b""


def _quota(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise InvalidCommandError(f"memory quota out of range: {value}")
    return value.to_bytes(2 if value <= 0xFFFF else 4, "big")


def install_parameters(
    app_specific: bytes = b"",
    *,
    volatile_quota: int | None = None,
    nv_quota: int | None = None,
    system: bytes = b"",
    extra: bytes = b"",
) -> bytes:
    """Install parameters field: ``C9 <application specific>`` (mandatory, may be empty) followed by
    optional ``EF { C7 volatile quota, C8 non-volatile quota, <system> }`` (§11.5.2.3.7)."""
    out = encode_tlv(0xC9, app_specific)
    sys = b""
    if volatile_quota is not None:
        sys += encode_tlv(0xC7, _quota(volatile_quota))
    if nv_quota is not None:
        sys += encode_tlv(0xC8, _quota(nv_quota))
    sys += bytes(system)
    if sys:
        out += encode_tlv(0xEF, sys)
    return out + bytes(extra)


def sd_install_parameters(scp: int, i: int, extra: bytes = b"") -> bytes:
    """Content of ``C9`` for a Security Domain: ``81 02 <scp> <i>`` (the SCP the SD speaks)."""
    if not (0 <= scp <= 0xFF and 0 <= i <= 0xFF):
        raise InvalidCommandError("scp and i must be bytes")
    return bytes([0x81, 0x02, scp, i]) + bytes(extra)


def _install(p1: int, data: bytes, p2: int = 0x00) -> bytes:
    if len(data) > SHORT_MAX_DATA:
        raise InvalidCommandError(f"INSTALL data of {len(data)} bytes exceeds a short APDU")
    return _apdu(CLA_GP, INS_INSTALL, p1, p2, data, le=256)


def install_for_load_data(
    elf_aid: bytes, sd_aid: bytes = b"", lfdb_hash: bytes = b"", load_params: bytes = b""
) -> bytes:
    """INSTALL [for load] data without the token field (§11.5.2.3.1, Table 11-45)."""
    return (
        _lv(_check_aid(elf_aid, "Load File AID"), "AID")
        + _lv(_check_aid(sd_aid, "SD AID", True), "AID")
        + _lv(lfdb_hash, "hash")
        + _lv_ber(load_params)
    )


def install_for_load(
    elf_aid: bytes,
    sd_aid: bytes = b"",
    lfdb_hash: bytes = b"",
    load_params: bytes = b"",
    token: bytes = b"",
    *,
    p2: int = 0x00,
) -> bytes:
    """INSTALL [for load]: ``80 E6 02 00`` (§11.5.2.3.1). Hash = LFDB hash (§C.2) when DAP/DM needs it."""
    data = install_for_load_data(elf_aid, sd_aid, lfdb_hash, load_params) + _lv_ber(token)
    return _install(INSTALL_FOR_LOAD, data, p2)


def install_for_install_data(
    elf_aid: bytes,
    module_aid: bytes,
    app_aid: bytes,
    privileges: Privileges | bytes = b"\x00",
    params: bytes = b"\xc9\x00",
) -> bytes:
    """INSTALL [for install] data without the token field (§11.5.2.3.2)."""
    return (
        _lv(_check_aid(elf_aid, "ELF AID"), "AID")
        + _lv(_check_aid(module_aid, "module AID"), "AID")
        + _lv(_check_aid(app_aid, "application AID"), "AID")
        + _lv(_privileges_bytes(privileges), "privileges")
        + _lv_ber(params)
    )


def install_for_install(
    elf_aid: bytes,
    module_aid: bytes,
    app_aid: bytes | None = None,
    privileges: Privileges | bytes = b"\x00",
    params: bytes = b"\xc9\x00",
    token: bytes = b"",
    *,
    make_selectable: bool = True,
    p2: int = 0x00,
) -> bytes:
    """INSTALL [for install] (P1 ``04``) or [for install and make selectable] (P1 ``0C``)."""
    p1 = INSTALL_FOR_INSTALL | (INSTALL_FOR_MAKE_SELECTABLE if make_selectable else 0)
    data = install_for_install_data(elf_aid, module_aid, app_aid or module_aid, privileges, params)
    return _install(p1, data + _lv_ber(token), p2)


def install_for_make_selectable_data(
    app_aid: bytes, privileges: Privileges | bytes = b"\x00", params: bytes = b""
) -> bytes:
    """INSTALL [for make selectable] data without token (§11.5.2.3.3)."""
    return (
        b"\x00\x00"
        + _lv(_check_aid(app_aid, "application AID"), "AID")
        + _lv(_privileges_bytes(privileges), "privileges")
        + _lv_ber(params)
    )


def install_for_make_selectable(
    app_aid: bytes, privileges: Privileges | bytes = b"\x00", params: bytes = b"", token: bytes = b""
) -> bytes:
    """INSTALL [for make selectable]: ``80 E6 08 00`` (§11.5.2.3.3)."""
    data = install_for_make_selectable_data(app_aid, privileges, params) + _lv_ber(token)
    return _install(INSTALL_FOR_MAKE_SELECTABLE, data)


def install_for_extradition_data(sd_aid: bytes, aid: bytes, params: bytes = b"") -> bytes:
    """INSTALL [for extradition] data without token (§11.5.2.3.4, Table 11-47)."""
    return (
        _lv(_check_aid(sd_aid, "SD AID"), "AID")
        + b"\x00"
        + _lv(_check_aid(aid, "AID"), "AID")
        + b"\x00"
        + _lv_ber(params)
    )


def install_for_extradition(sd_aid: bytes, aid: bytes, params: bytes = b"", token: bytes = b"") -> bytes:
    """INSTALL [for extradition]: move an application or ELF to another SD (``80 E6 10 00``)."""
    return _install(INSTALL_FOR_EXTRADITION, install_for_extradition_data(sd_aid, aid, params) + _lv_ber(token))


def install_for_registry_update_data(
    app_aid: bytes, sd_aid: bytes = b"", privileges: Privileges | bytes = b"", params: bytes = b""
) -> bytes:
    """INSTALL [for registry update] data without token (§11.5.2.3.5)."""
    return (
        _lv(_check_aid(sd_aid, "SD AID", True), "AID")
        + b"\x00"
        + _lv(_check_aid(app_aid, "application AID"), "AID")
        + _lv(_privileges_bytes(privileges) if privileges else b"", "privileges")
        + _lv_ber(params)
    )


def install_for_registry_update(
    app_aid: bytes, sd_aid: bytes = b"", privileges: Privileges | bytes = b"", params: bytes = b"", token: bytes = b""
) -> bytes:
    """INSTALL [for registry update]: ``80 E6 40 00`` (§11.5.2.3.5)."""
    data = install_for_registry_update_data(app_aid, sd_aid, privileges, params) + _lv_ber(token)
    return _install(INSTALL_FOR_REGISTRY_UPDATE, data)


def install_for_personalization(app_aid: bytes) -> bytes:
    """INSTALL [for personalization]: ``00 00 len AID 00 00 00`` (§11.5.2.3.6).

    The following STORE DATA commands go to that application through the SD.
    """
    data = b"\x00\x00" + _lv(_check_aid(app_aid, "application AID"), "AID") + b"\x00\x00\x00"
    return _install(INSTALL_FOR_PERSONALIZATION, data)


@dataclass(frozen=True)
class InstallCommand:
    """The fields of an INSTALL data field, as the card sees them (§11.5.2.3). Unused fields are empty."""

    p1: int
    elf_aid: bytes = b""
    sd_aid: bytes = b""
    lfdb_hash: bytes = b""
    module_aid: bytes = b""
    app_aid: bytes = b""
    privileges: bytes = b""
    params: bytes = b""
    token: bytes = b""

    @property
    def kind(self) -> str:
        p = self.p1 & 0x7E
        if p == INSTALL_FOR_LOAD:
            return "load"
        if p & INSTALL_FOR_INSTALL:
            return "install_and_make_selectable" if p & INSTALL_FOR_MAKE_SELECTABLE else "install"
        return {
            INSTALL_FOR_MAKE_SELECTABLE: "make_selectable",
            INSTALL_FOR_EXTRADITION: "extradition",
            INSTALL_FOR_PERSONALIZATION: "personalization",
            INSTALL_FOR_REGISTRY_UPDATE: "registry_update",
        }.get(p, "unknown")


def parse_install(p1: int, data: bytes) -> InstallCommand:
    """Card side: split INSTALL data into its fields per P1 (§11.5.2.3, Tables 11-43 .. 11-48);
    strict about every length, every AID (ISO/IEC 7816-5: 5..16 bytes) and every field GP fixes
    to ``00``. The token length may be absent altogether in a command without a token."""
    data = bytes(data)
    pos = 0

    def lv(*, aid: str = "", required: bool = False) -> bytes:
        nonlocal pos
        if pos >= len(data):
            raise EncodingError("INSTALL data truncated")
        n = data[pos]
        if pos + 1 + n > len(data):
            raise EncodingError("INSTALL data field longer than the data")
        out = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if aid and (out or required) and not 5 <= n <= 16:
            raise EncodingError(f"INSTALL {aid} of {n} bytes (ISO/IEC 7816-5: 5..16)")
        return out

    def zero() -> None:
        if lv():
            raise EncodingError("INSTALL data: a field GP fixes to 00 is not empty")

    def ber_lv() -> bytes:
        nonlocal pos
        try:
            n, pos = decode_length(data, pos)
        except TLVError as exc:
            raise EncodingError(f"INSTALL data: {exc}") from exc
        if pos + n > len(data):
            raise EncodingError("INSTALL data field longer than the data")
        out = data[pos : pos + n]
        pos += n
        return out

    def token() -> bytes:
        return ber_lv() if pos < len(data) else b""

    kind = InstallCommand(p1).kind
    if kind == "load":
        cmd = InstallCommand(
            p1,
            elf_aid=lv(aid="ELF AID", required=True),
            sd_aid=lv(aid="SD AID"),
            lfdb_hash=lv(),
            params=ber_lv(),
            token=token(),
        )
    elif kind in ("install", "install_and_make_selectable"):
        cmd = InstallCommand(
            p1,
            elf_aid=lv(aid="ELF AID", required=True),
            module_aid=lv(aid="module AID", required=True),
            app_aid=lv(aid="application AID", required=True),
            privileges=lv(),
            params=ber_lv(),
            token=token(),
        )
    elif kind == "make_selectable":
        zero()
        zero()
        cmd = InstallCommand(
            p1, app_aid=lv(aid="application AID", required=True), privileges=lv(), params=ber_lv(), token=token()
        )
    elif kind == "extradition":
        sd = lv(aid="SD AID", required=True)
        zero()
        app = lv(aid="AID", required=True)
        zero()
        cmd = InstallCommand(p1, sd_aid=sd, app_aid=app, params=ber_lv(), token=token())
    elif kind == "registry_update":
        sd = lv(aid="SD AID")
        zero()
        cmd = InstallCommand(
            p1,
            sd_aid=sd,
            app_aid=lv(aid="application AID", required=True),
            privileges=lv(),
            params=ber_lv(),
            token=token(),
        )
    elif kind == "personalization":
        zero()
        zero()
        cmd = InstallCommand(p1, app_aid=lv(aid="application AID", required=True))
        for _ in range(3):
            if pos < len(data):
                zero()
    else:
        raise EncodingError(f"INSTALL P1 {p1:02X} is not a known INSTALL variant")
    if pos != len(data):
        raise EncodingError(f"INSTALL data: {len(data) - pos} unexpected trailing bytes")
    # §11.1.2: privileges are 1 or 3 bytes; a registry update may leave them unchanged (empty).
    needs_privileges = kind in ("install", "install_and_make_selectable", "make_selectable")
    if (cmd.privileges or needs_privileges) and len(cmd.privileges) not in (1, 3):
        raise EncodingError(f"INSTALL privileges must be 1 or 3 bytes, got {len(cmd.privileges)}")
    return cmd
