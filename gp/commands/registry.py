"""The GlobalPlatform Registry: privileges (GPC 2.3.1 §11.1.2), life cycle states (§5.1, §5.3,
coded as in §11.1.1) and GET STATUS (§11.4), which lists them."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self, SupportsBytes, SupportsIndex

from gp.apdu import SW
from gp.commands._fields import _apdu, _check_aid
from gp.commands.constants import (
    CLA_GP,
    INS_GET_STATUS,
    STATUS_APPS,
    STATUS_ELF,
    STATUS_ELF_MODULES,
    STATUS_ISD,
)
from gp.errors import EncodingError, InvalidCommandError, LocalProtocolError, TLVError
from gp.tlv import decode_all, encode_tlv, find

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class Privileges(enum.IntFlag):
    """Three privilege bytes (§11.1.2), as one 24-bit value (byte 1 most significant)."""

    # byte 1
    SECURITY_DOMAIN = 0x800000
    DAP_VERIFICATION = 0x400000  # with SECURITY_DOMAIN (byte 1 = C0)
    DELEGATED_MANAGEMENT = 0x200000  # with SECURITY_DOMAIN (A0)
    CARD_LOCK = 0x100000
    CARD_TERMINATE = 0x080000
    CARD_RESET = 0x040000  # "Default Selected" in GP 2.1.1
    CVM_MANAGEMENT = 0x020000
    MANDATED_DAP_VERIFICATION = 0x010000  # with SECURITY_DOMAIN and DAP_VERIFICATION (C1)
    # byte 2
    TRUSTED_PATH = 0x008000
    AUTHORIZED_MANAGEMENT = 0x004000
    TOKEN_VERIFICATION = 0x002000
    GLOBAL_DELETE = 0x001000
    GLOBAL_LOCK = 0x000800
    GLOBAL_REGISTRY = 0x000400
    FINAL_APPLICATION = 0x000200
    GLOBAL_SERVICE = 0x000100
    # byte 3
    RECEIPT_GENERATION = 0x000080
    CIPHERED_LOAD_FILE_DATA_BLOCK = 0x000040
    CONTACTLESS_ACTIVATION = 0x000020
    CONTACTLESS_SELF_ACTIVATION = 0x000010

    @classmethod
    def from_bytes(
        cls,
        raw: Iterable[SupportsIndex] | SupportsBytes | ReadableBuffer,
        byteorder: Literal["little", "big"] = "big",
        *,
        signed: bool = False,
    ) -> Self:
        """From the 3-byte form or the 1-byte form of GP 2.1.1 (bytes 2 and 3 taken as zero).

        The signature is ``int.from_bytes``'s; privileges are unsigned big-endian (§11.1.2).
        """
        if byteorder != "big" or signed:
            raise LocalProtocolError("privileges are unsigned big-endian (GPC 2.3.1 §11.1.2)")
        data = bytes(raw)
        if len(data) == 1:
            data += b"\x00\x00"
        if len(data) != 3:
            raise EncodingError(f"privileges must be 1 or 3 bytes, got {len(data)}")
        return cls(int.from_bytes(data, "big"))

    def to_bytes(
        self, length: SupportsIndex = 3, byteorder: Literal["little", "big"] = "big", *, signed: bool = False
    ) -> bytes:
        """The three privilege bytes (``int.to_bytes``'s signature, defaulting to GP's encoding)."""
        return int(self).to_bytes(length, byteorder, signed=signed)

    @property
    def names(self) -> list[str]:
        return [p.name for p in Privileges if p.name and p in self]


def _privileges_bytes(privileges: Privileges | bytes) -> bytes:
    if isinstance(privileges, Privileges):
        return privileges.to_bytes()
    raw = bytes(privileges)
    if len(raw) not in (1, 3):
        raise InvalidCommandError(f"privileges must be 1 or 3 bytes, got {len(raw)}")
    return raw


class CardLifeCycle(enum.IntEnum):
    """The card's life cycle state (GPC 2.3.1 §5.1.1; coding §11.1.1), the ISD's ``9F70`` in GET STATUS."""

    OP_READY = 0x01
    INITIALIZED = 0x07
    SECURED = 0x0F
    CARD_LOCKED = 0x7F
    TERMINATED = 0xFF


class ExecutableLoadFileLifeCycle(enum.IntEnum):
    """An Executable Load File's life cycle state (GPC 2.3.1 §5.3.1; coding §11.1.1)."""

    LOADED = 0x01


class ApplicationLifeCycle(enum.IntEnum):
    """An application's life cycle state (GPC 2.3.1 §5.3.2; coding §11.1.1). Once SELECTABLE, bits
    b4-b7 are the application's own; ``LOCKED_BIT`` set means locked, the other bits kept."""

    INSTALLED = 0x03
    SELECTABLE = 0x07


class SecurityDomainLifeCycle(enum.IntEnum):
    """A Security Domain's life cycle state (GPC 2.3.1 §5.3.3; coding §11.1.1); ``LOCKED_BIT`` locks it."""

    INSTALLED = 0x03
    SELECTABLE = 0x07
    PERSONALIZED = 0x0F


# b8 of an application's or Security Domain's life cycle byte: LOCKED, earlier state kept (§11.1.1).
LOCKED_BIT = 0x80
# Bits b4-b7 of a SELECTABLE application's state are application specific (§11.1.1).
APPLICATION_STATE_MASK = 0x87


def lifecycle_name(kind: str, value: int) -> str:
    """Name of a life cycle byte; ``kind`` is ``card``, ``app``, ``sd`` or ``elf`` (§11.1.1)."""
    if kind == "card":
        return CardLifeCycle(value).name if value in CardLifeCycle._value2member_map_ else f"UNKNOWN_{value:02X}"
    if kind == "elf":
        return "LOADED" if value == ExecutableLoadFileLifeCycle.LOADED else f"UNKNOWN_{value:02X}"
    if kind not in ("app", "sd"):
        raise LocalProtocolError(f"unknown life cycle kind {kind!r}")
    if value & LOCKED_BIT and value & ApplicationLifeCycle.INSTALLED == ApplicationLifeCycle.INSTALLED:
        return "LOCKED"
    if value == ApplicationLifeCycle.INSTALLED:
        return "INSTALLED"
    if value == ApplicationLifeCycle.SELECTABLE:
        return "SELECTABLE"
    if kind == "sd" and value == SecurityDomainLifeCycle.PERSONALIZED:
        return "PERSONALIZED"
    if kind == "app" and value & APPLICATION_STATE_MASK == ApplicationLifeCycle.SELECTABLE:
        return f"SELECTABLE (application specific {value:02X})"
    return f"UNKNOWN_{value:02X}"


def get_status(
    p1: int, *, aid_filter: bytes = b"", next_occurrence: bool = False, tag_format: bool = True, tag_list: bytes = b""
) -> bytes:
    """GET STATUS ``80 F2 P1 P2 Lc 4F <aid filter> [5C <tag list>] 00`` (§11.4.2).

    P1: ``80`` ISD, ``40`` applications and SDs, ``20`` ELFs, ``10`` ELFs and modules.
    P2: b2 = 1 for the tagged response format (``02``), b1 = 1 for "next occurrence" after ``6310``.
    """
    if p1 not in (STATUS_ISD, STATUS_APPS, STATUS_ELF, STATUS_ELF_MODULES):
        raise InvalidCommandError(f"GET STATUS P1 must be 80, 40, 20 or 10, got {p1:02X}")
    p2 = (0x02 if tag_format else 0x00) | (0x01 if next_occurrence else 0x00)
    data = encode_tlv(0x4F, _check_aid(aid_filter, "AID filter", allow_empty=True))
    if tag_list:
        data += encode_tlv(0x5C, tag_list)
    return _apdu(CLA_GP, INS_GET_STATUS, p1, p2, data, le=256)


def get_status_next(
    p1: int, sw: int, *, aid_filter: bytes = b"", tag_format: bool = True, tag_list: bytes = b""
) -> bytes | None:
    """After a GET STATUS answered ``6310`` (more data), the "next occurrence" command; else None."""
    if sw != SW.WARNING_MORE_DATA:
        return None
    return get_status(p1, aid_filter=aid_filter, next_occurrence=True, tag_format=tag_format, tag_list=tag_list)


@dataclass(frozen=True)
class RegistryEntry:
    """One GlobalPlatform Registry entry from GET STATUS (§11.4.3)."""

    aid: bytes
    lifecycle: int
    privileges: Privileges | None = None  # C5 (absent for ELFs)
    kind: str = "app"  # card | app | sd | elf
    elf_aid: bytes | None = None  # C4: the application's Executable Load File
    associated_sd_aid: bytes | None = None  # CC
    elf_version: bytes | None = None  # CE
    modules: tuple[bytes, ...] = ()  # 84: Executable Module AIDs
    implicit_selection: tuple[bytes, ...] = ()  # CF: implicit selection parameters

    @property
    def lifecycle_name(self) -> str:
        return lifecycle_name(self.kind, self.lifecycle)

    @property
    def is_security_domain(self) -> bool:
        return bool(self.privileges and Privileges.SECURITY_DOMAIN in self.privileges)


def _kind_for(p1: int | None, privileges: Privileges | None) -> str:
    if p1 == STATUS_ISD:
        return "card"
    if p1 in (STATUS_ELF, STATUS_ELF_MODULES):
        return "elf"
    if privileges is not None and Privileges.SECURITY_DOMAIN in privileges:
        return "sd"
    if p1 is None and privileges is None:
        return "elf"
    return "app"


def parse_get_status(data: bytes, p1: int | None = None) -> list[RegistryEntry]:
    """Parse a tagged-format (P2 = ``02``) GET STATUS response: ``E3 { 4F, 9F70, C5, C4, CC, CE, 84*, CF* }``.

    ``p1`` (the request's P1) tells card/ELF entries apart; without it an entry with no
    privileges is taken as an ELF and one with Security Domain privilege as an SD.
    """
    out = []
    for obj in decode_all(data):
        if obj.tag != 0xE3 or not obj.constructed:
            raise TLVError(f"GET STATUS: expected registry template E3, got {obj.tag:X}")
        kids = obj.children()
        aid = find(kids, 0x4F)
        lc = find(kids, 0x9F70)
        if aid is None:
            raise TLVError("GET STATUS entry without AID (4F)")
        if lc is None or len(lc.value) not in (1, 2):
            raise TLVError("GET STATUS entry without a valid life cycle state (9F70)")
        priv_tlv = find(kids, 0xC5)
        privileges = Privileges.from_bytes(priv_tlv.value) if priv_tlv is not None else None
        elf = find(kids, 0xC4)
        sd = find(kids, 0xCC)
        ver = find(kids, 0xCE)
        modules = tuple(t.value for t in kids if t.tag == 0x84)
        out.append(
            RegistryEntry(
                aid=aid.value,
                lifecycle=lc.value[0],
                privileges=privileges,
                kind=_kind_for(p1, privileges),
                elf_aid=elf.value if elf else None,
                associated_sd_aid=sd.value if sd else None,
                elf_version=ver.value if ver else None,
                modules=modules,
                implicit_selection=tuple(t.value for t in kids if t.tag == 0xCF),
            )
        )
    return out


def parse_get_status_legacy(data: bytes, p1: int) -> list[RegistryEntry]:
    """Parse the P2 = ``00`` format (§11.4.3.1, GP 2.1.1 compatible).

    Each entry: ``len AID, life cycle, privileges (1 byte)``; with P1 = ``10`` followed by
    ``number of modules, (len AID)*``.
    """
    data = bytes(data)
    out = []
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise TLVError("GET STATUS (legacy format): truncated entry")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    while pos < len(data):
        aid = take(take(1)[0])
        lifecycle = take(1)[0]
        priv = Privileges.from_bytes(take(1))
        modules: tuple[bytes, ...] = ()
        if p1 == STATUS_ELF_MODULES:
            count = take(1)[0]
            modules = tuple(take(take(1)[0]) for _ in range(count))
        is_elf = p1 in (STATUS_ELF, STATUS_ELF_MODULES)
        out.append(
            RegistryEntry(
                aid=aid,
                lifecycle=lifecycle,
                privileges=None if is_elf else priv,
                kind=_kind_for(p1, None if is_elf else priv),
                modules=modules,
            )
        )
    return out
