"""GlobalPlatform card content management commands: builders (plain C-APDU bytes) and parsers.

Section numbers refer to GlobalPlatform Card Specification v2.3.1 (GPC_SPE_034) unless noted.
Builders return *plain* C-APDUs (GP class byte ``80``; ISO commands ``00``); the secure channel
(``gp.scp``) wraps them. Parsers take response *data* (without SW1 SW2) and raise
:class:`gp.errors.EncodingError` subclasses (mostly :class:`TLVError`) on malformed input.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gp.apdu import CommandAPDU
from gp.errors import APDUError, EncodingError, LoadError, TLVError
from gp.tlv import Tlv, decode_all, decode_length, encode_length, encode_tlv, find

CLA_ISO = 0x00
CLA_GP = 0x80

INS_SELECT = 0xA4
INS_GET_DATA = 0xCA
INS_GET_STATUS = 0xF2
INS_INSTALL = 0xE6
INS_LOAD = 0xE8
INS_DELETE = 0xE4
INS_SET_STATUS = 0xF0
INS_STORE_DATA = 0xE2
INS_PUT_KEY = 0xD8

# GET DATA tags (§11.3.3.1, §H.4 / Amendment A for 66)
TAG_IIN = 0x42
TAG_CIN = 0x45
TAG_CARD_DATA = 0x66
TAG_KEY_INFO = 0xE0
TAG_SEQUENCE_COUNTER = 0xC1
TAG_KDD = 0xCF
TAG_CPLC = 0x9F7F

# GET STATUS P1 (§11.4.2.1)
STATUS_ISD = 0x80
STATUS_APPS = 0x40  # applications, including Security Domains
STATUS_ELF = 0x20  # Executable Load Files
STATUS_ELF_MODULES = 0x10  # Executable Load Files and their Executable Modules

# INSTALL P1 (§11.5.2.1)
INSTALL_MORE = 0x01
INSTALL_FOR_LOAD = 0x02
INSTALL_FOR_INSTALL = 0x04
INSTALL_FOR_MAKE_SELECTABLE = 0x08
INSTALL_FOR_EXTRADITION = 0x10
INSTALL_FOR_PERSONALIZATION = 0x20
INSTALL_FOR_REGISTRY_UPDATE = 0x40

# SET STATUS P1 (§11.10.2.1)
SET_STATUS_ISD = 0x80
SET_STATUS_APP = 0x40
SET_STATUS_SD_AND_APPS = 0x60

# Card lifecycle states (§11.1.1)
CARD_OP_READY = 0x01
CARD_INITIALIZED = 0x07
CARD_SECURED = 0x0F
CARD_LOCKED = 0x7F
CARD_TERMINATED = 0xFF

# Executable Load File / Application / Security Domain lifecycle (§11.1.1)
ELF_LOADED = 0x01
APP_INSTALLED = 0x03
APP_SELECTABLE = 0x07
SD_PERSONALIZED = 0x0F
LOCKED_BIT = 0x80

SHORT_MAX_DATA = 255
EXTENDED_MAX_DATA = 65535
MAX_LOAD_BLOCKS = 256  # P2 block number is one byte (§11.6.2.2)


def _apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None,
          extended: bool = False) -> bytes:
    try:
        return CommandAPDU(cla, ins, p1, p2, bytes(data), le, extended).to_bytes()
    except APDUError:
        raise
    except (TypeError, ValueError) as exc:  # defensive: never let a bare error escape
        raise APDUError(str(exc)) from exc


def _check_aid(aid: bytes, what: str = "AID", allow_empty: bool = False) -> bytes:
    aid = bytes(aid)
    if allow_empty and not aid:
        return aid
    if not 5 <= len(aid) <= 16:  # ISO/IEC 7816-5: AIDs are 5..16 bytes
        raise EncodingError(f"{what} must be 5..16 bytes, got {len(aid)}")
    return aid


def _lv(value: bytes, what: str) -> bytes:
    """One-byte length + value (AID, hash and privileges fields of INSTALL, §11.5.2.3)."""
    value = bytes(value)
    if len(value) > 255:
        raise EncodingError(f"{what} too long: {len(value)} bytes")
    return bytes([len(value)]) + value


def _lv_ber(value: bytes) -> bytes:
    """BER length (1-3 bytes) + value, for parameter and token fields (§11.5.2.3: length 1-3)."""
    value = bytes(value)
    return encode_length(len(value)) + value


# ---------------------------------------------------------------------------------------------
# SELECT (§11.9) and the FCI
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# GET DATA (§11.3) and its data objects
# ---------------------------------------------------------------------------------------------


def get_data(tag: int, *, cla: int = CLA_GP) -> bytes:
    """GET DATA: ``80 CA P1 P2 00`` with P1 P2 the tag (§11.3.2; CLA 00 also allowed)."""
    if not 0 < tag <= 0xFFFF:
        raise EncodingError(f"GET DATA tag must fit in P1 P2, got {tag:X}")
    return _apdu(cla, INS_GET_DATA, tag >> 8, tag & 0xFF, le=256)


def tagged_value(data: bytes, tag: int) -> bytes:
    """The value of ``tag`` in a GET DATA response (e.g. ``42``/``45``/``CF``/``C1``)."""
    t = find(decode_all(data), tag)
    if t is None:
        raise TLVError(f"response does not contain tag {tag:X}")
    return t.value


def parse_sequence_counter(data: bytes) -> int:
    """GET DATA ``C1``: the key set's sequence counter (SCP02: 2 bytes, SCP03: 3 bytes)."""
    value = tagged_value(data, TAG_SEQUENCE_COUNTER)
    if not 1 <= len(value) <= 4:
        raise TLVError(f"sequence counter of {len(value)} bytes")
    return int.from_bytes(value, "big")


def parse_kdd(data: bytes) -> bytes:
    """GET DATA ``CF``: key diversification data (10 bytes on most cards)."""
    return tagged_value(data, TAG_KDD)


# CPLC: GP 2.3.1 (Card Production Life Cycle data, from the Visa/EMV CPS), 42 bytes.
CPLC_FIELDS: tuple[tuple[str, int], ...] = (
    ("ic_fabricator", 2),
    ("ic_type", 2),
    ("os_id", 2),
    ("os_release_date", 2),
    ("os_release_level", 2),
    ("ic_fabrication_date", 2),
    ("ic_serial_number", 4),
    ("ic_batch_identifier", 2),
    ("ic_module_fabricator", 2),
    ("ic_module_packaging_date", 2),
    ("icc_manufacturer", 2),
    ("ic_embedding_date", 2),
    ("ic_pre_personalizer", 2),
    ("ic_pre_personalization_date", 2),
    ("ic_pre_personalization_equipment_id", 4),
    ("ic_personalizer", 2),
    ("ic_personalization_date", 2),
    ("ic_personalization_equipment_id", 4),
)
CPLC_LENGTH = sum(n for _, n in CPLC_FIELDS)  # 42


@dataclass(frozen=True)
class CPLC:
    """Card Production Life Cycle data (GET DATA ``9F7F``). Dates are ``YDDD`` BCD (year digit, day)."""

    ic_fabricator: bytes
    ic_type: bytes
    os_id: bytes
    os_release_date: bytes
    os_release_level: bytes
    ic_fabrication_date: bytes
    ic_serial_number: bytes
    ic_batch_identifier: bytes
    ic_module_fabricator: bytes
    ic_module_packaging_date: bytes
    icc_manufacturer: bytes
    ic_embedding_date: bytes
    ic_pre_personalizer: bytes
    ic_pre_personalization_date: bytes
    ic_pre_personalization_equipment_id: bytes
    ic_personalizer: bytes
    ic_personalization_date: bytes
    ic_personalization_equipment_id: bytes

    def to_bytes(self) -> bytes:
        return b"".join(getattr(self, n) for n, _ in CPLC_FIELDS)

    def as_hex(self) -> dict[str, str]:
        return {n: getattr(self, n).hex().upper() for n, _ in CPLC_FIELDS}


def parse_cplc(data: bytes) -> CPLC:
    """Parse CPLC: the ``9F7F`` TLV returned by GET DATA, or its bare value.

    At least 42 bytes; bytes beyond the 42 defined ones (some cards append data) are ignored.
    """
    data = bytes(data)
    if data[:2] == b"\x9f\x7f":
        data = tagged_value(data, TAG_CPLC)
    if len(data) < CPLC_LENGTH:
        raise TLVError(f"CPLC must be at least {CPLC_LENGTH} bytes, got {len(data)}")
    values: dict[str, bytes] = {}
    pos = 0
    for name, n in CPLC_FIELDS:
        values[name] = data[pos : pos + n]
        pos += n
    return CPLC(**values)


def decode_oid(value: bytes) -> tuple[int, ...]:
    """Decode the content of an OBJECT IDENTIFIER (X.690 §8.19)."""
    if not value:
        raise TLVError("empty OID")
    arcs: list[int] = []
    acc = 0
    for i, b in enumerate(value):
        if acc == 0 and b == 0x80:
            raise TLVError("OID arc with a leading 80 byte")
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(acc)
            acc = 0
        elif i == len(value) - 1:
            raise TLVError("truncated OID")
    first = arcs[0]
    head = (min(first // 40, 2), first - 40 * min(first // 40, 2))
    return head + tuple(arcs[1:])


GP_OID = (1, 2, 840, 114283)  # globalPlatform


@dataclass(frozen=True)
class CardData:
    """Card Recognition Data (GET DATA ``66``; GP 2.3.1 §H.2 / Amendment A)."""

    gp_version: tuple[int, ...] | None = None  # from tag 60: OID 1.2.840.114283.2.<v>
    card_identification_scheme: tuple[int, ...] | None = None  # tag 63
    scp: tuple[tuple[int, int], ...] = ()  # tag 64: OID 1.2.840.114283.4.<scp>.<i>
    oids: dict[int, tuple[int, ...]] = field(default_factory=dict)  # every tag -> its first OID

    @property
    def gp_version_str(self) -> str | None:
        return ".".join(map(str, self.gp_version)) if self.gp_version else None


def parse_card_data(data: bytes) -> CardData:
    """Parse ``66 { 73 { 06 <CRD OID>, 60 {06 ...}, 63 {06 ...}, 64 {06 ...}, ... } }``.

    Also accepts the ``73`` template alone (as found in the FCI, §11.9.3.1).
    """
    objs = decode_all(data)
    top = find(objs, 0x66) or find(objs, 0x73)
    if top is None or not top.constructed:
        raise TLVError("card data: neither tag 66 nor 73 found")
    crd = top if top.tag == 0x73 else top.find(0x73)
    if crd is None or not crd.constructed:
        raise TLVError("card data: Card Recognition Data template 73 missing")
    oids: dict[int, tuple[int, ...]] = {}
    scps: list[tuple[int, int]] = []
    gp_version = scheme = None
    for child in crd.children():
        if child.tag == 0x06:
            oids[0x06] = decode_oid(child.value)
            continue
        if not child.constructed:
            continue
        inner = [t for t in child.children() if t.tag == 0x06]
        if not inner:
            continue
        oid = decode_oid(inner[0].value)
        oids.setdefault(child.tag, oid)
        if child.tag == 0x60 and oid[:5] == (*GP_OID, 2):
            gp_version = oid[5:]
        elif child.tag == 0x63:
            scheme = oid
        elif child.tag == 0x64:
            for t in inner:
                o = decode_oid(t.value)
                if o[:5] == (*GP_OID, 4) and len(o) >= 7:
                    scps.append((o[5], o[6]))
    return CardData(gp_version, scheme, tuple(scps), oids)


# Key types (§11.1.8)
KEY_TYPES: dict[int, str] = {
    0x80: "DES", 0x81: "RFU", 0x82: "3DES-CBC", 0x83: "DES-ECB", 0x84: "DES-CBC", 0x85: "PSK-TLS",
    0x88: "AES", 0x90: "HMAC-SHA1", 0x91: "HMAC-SHA1-160",
    0xA0: "RSA-PUBLIC-E", 0xA1: "RSA-PUBLIC-N", 0xA2: "RSA-PRIVATE-N", 0xA3: "RSA-PRIVATE-D",
    0xA4: "RSA-CRT-P", 0xA5: "RSA-CRT-Q", 0xA6: "RSA-CRT-PQ", 0xA7: "RSA-CRT-DP1", 0xA8: "RSA-CRT-DQ1",
    0xB0: "ECC-PUBLIC", 0xB1: "ECC-PRIVATE", 0xB2: "ECC-FIELD-P", 0xB3: "ECC-A", 0xB4: "ECC-B",
    0xB5: "ECC-G", 0xB6: "ECC-N", 0xB7: "ECC-K", 0xF0: "ECC-KEY-PARAMETERS-REFERENCE",
}


@dataclass(frozen=True)
class KeyInfo:
    """One Key Information Data entry (``C0``) of the Key Information Template ``E0`` (§11.3.3.1)."""

    kvn: int
    key_id: int
    components: tuple[tuple[int, int], ...]  # (key type, key length in bytes)
    usage: bytes | None = None  # extended format only
    access: bytes | None = None  # extended format only

    @property
    def key_type(self) -> int:
        return self.components[0][0]

    @property
    def key_length(self) -> int:
        return self.components[0][1]

    @property
    def type_name(self) -> str:
        return KEY_TYPES.get(self.key_type, f"0x{self.key_type:02X}")


def _parse_key_info_entry(v: bytes) -> KeyInfo:
    if len(v) < 4:
        raise TLVError(f"key information data of {len(v)} bytes (at least 4)")
    key_id, kvn = v[0], v[1]
    rest = v[2:]
    comps: list[tuple[int, int]] = []
    usage = access = None
    if rest[0] == 0xFF:
        # Extended format (§11.3.3.1): FF <type> <len u2> ..., then usage and access.
        pos = 0
        while pos < len(rest) and rest[pos] == 0xFF:
            if pos + 4 > len(rest):
                raise TLVError("truncated extended key information")
            comps.append((rest[pos + 1], int.from_bytes(rest[pos + 2 : pos + 4], "big")))
            pos += 4
        for _ in range(2):
            if pos >= len(rest):
                break
            n = rest[pos]
            if pos + 1 + n > len(rest):
                raise TLVError("truncated key usage/access in key information")
            val = rest[pos + 1 : pos + 1 + n]
            if usage is None:
                usage = val
            else:
                access = val
            pos += 1 + n
        if pos != len(rest):
            raise TLVError("trailing bytes in extended key information")
    else:
        # Basic format: (type, length) pairs, one per key component (§11.3.3.1).
        if len(rest) % 2:
            raise TLVError("odd number of key type/length bytes in key information")
        comps = [(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]
    return KeyInfo(kvn, key_id, tuple(comps), usage, access)


def parse_key_information(data: bytes) -> list[KeyInfo]:
    """Parse GET DATA ``E0``: ``E0 { C0 <key id> <kvn> <type> <len> [...] ... }``."""
    objs = decode_all(data)
    e0 = find(objs, TAG_KEY_INFO)
    entries = e0.children() if e0 is not None and e0.constructed else objs
    # an empty C0 is a fresh SD's placeholder (seen on real cards): skip it
    out = [_parse_key_info_entry(t.value) for t in entries if t.tag == 0xC0 and t.value]
    if e0 is None and not out:
        raise TLVError("no key information template (E0) in the response")
    return out


# ---------------------------------------------------------------------------------------------
# Privileges (§11.1.2) and life cycle names (§11.1.1)
# ---------------------------------------------------------------------------------------------


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
    def from_bytes(cls, raw: bytes) -> Privileges:
        """From the 3-byte form or the 1-byte form of GP 2.1.1 (bytes 2 and 3 taken as zero)."""
        raw = bytes(raw)
        if len(raw) == 1:
            raw += b"\x00\x00"
        if len(raw) != 3:
            raise EncodingError(f"privileges must be 1 or 3 bytes, got {len(raw)}")
        return cls(int.from_bytes(raw, "big"))

    def to_bytes(self) -> bytes:  # type: ignore[override]
        return int(self).to_bytes(3, "big")

    @property
    def names(self) -> list[str]:
        return [p.name for p in Privileges if p.name and p in self]


def _privileges_bytes(privileges: Privileges | bytes) -> bytes:
    if isinstance(privileges, Privileges):
        return privileges.to_bytes()
    raw = bytes(privileges)
    if len(raw) not in (1, 3):
        raise EncodingError(f"privileges must be 1 or 3 bytes, got {len(raw)}")
    return raw


_CARD_STATES = {0x01: "OP_READY", 0x07: "INITIALIZED", 0x0F: "SECURED", 0x7F: "CARD_LOCKED",
                0xFF: "TERMINATED"}


def lifecycle_name(kind: str, value: int) -> str:
    """Name of a life cycle byte; ``kind`` is ``card``, ``app``, ``sd`` or ``elf`` (§11.1.1)."""
    if kind == "card":
        return _CARD_STATES.get(value, f"UNKNOWN_{value:02X}")
    if kind == "elf":
        return "LOADED" if value == ELF_LOADED else f"UNKNOWN_{value:02X}"
    if kind not in ("app", "sd"):
        raise EncodingError(f"unknown life cycle kind {kind!r}")
    if value & LOCKED_BIT and value & 0x03 == 0x03:
        return "LOCKED"
    if value == APP_INSTALLED:
        return "INSTALLED"
    if value == APP_SELECTABLE:
        return "SELECTABLE"
    if kind == "sd" and value == SD_PERSONALIZED:
        return "PERSONALIZED"
    if kind == "app" and value & 0x87 == 0x07:
        return f"SELECTABLE (application specific {value:02X})"
    return f"UNKNOWN_{value:02X}"


# ---------------------------------------------------------------------------------------------
# GET STATUS (§11.4)
# ---------------------------------------------------------------------------------------------


def get_status(p1: int, *, aid_filter: bytes = b"", next_occurrence: bool = False, tag_format: bool = True,
               tag_list: bytes = b"") -> bytes:
    """GET STATUS ``80 F2 P1 P2 Lc 4F <aid filter> [5C <tag list>] 00`` (§11.4.2).

    P1: ``80`` ISD, ``40`` applications and SDs, ``20`` ELFs, ``10`` ELFs and modules.
    P2: b2 = 1 for the tagged response format (``02``), b1 = 1 for "next occurrence" after ``6310``.
    """
    if p1 not in (STATUS_ISD, STATUS_APPS, STATUS_ELF, STATUS_ELF_MODULES):
        raise EncodingError(f"GET STATUS P1 must be 80, 40, 20 or 10, got {p1:02X}")
    p2 = (0x02 if tag_format else 0x00) | (0x01 if next_occurrence else 0x00)
    data = encode_tlv(0x4F, _check_aid(aid_filter, "AID filter", allow_empty=True))
    if tag_list:
        data += encode_tlv(0x5C, tag_list)
    return _apdu(CLA_GP, INS_GET_STATUS, p1, p2, data, le=256)


def get_status_next(p1: int, sw: int, **kwargs: object) -> bytes | None:
    """After a GET STATUS answered ``6310`` (more data), the "next occurrence" command; else None."""
    if sw != 0x6310:
        return None
    return get_status(p1, next_occurrence=True, **kwargs)  # type: ignore[arg-type]


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
        out.append(RegistryEntry(
            aid=aid.value,
            lifecycle=lc.value[0],
            privileges=privileges,
            kind=_kind_for(p1, privileges),
            elf_aid=elf.value if elf else None,
            associated_sd_aid=sd.value if sd else None,
            elf_version=ver.value if ver else None,
            modules=modules,
            implicit_selection=tuple(t.value for t in kids if t.tag == 0xCF),
        ))
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
        out.append(RegistryEntry(
            aid=aid,
            lifecycle=lifecycle,
            privileges=None if is_elf else priv,
            kind=_kind_for(p1, None if is_elf else priv),
            modules=modules,
        ))
    return out


# ---------------------------------------------------------------------------------------------
# INSTALL (§11.5)
# ---------------------------------------------------------------------------------------------


def load_parameters(*, nv_code: int | None = None, volatile_data: int | None = None,
                    nv_data: int | None = None, extra: bytes = b"") -> bytes:
    """Load parameters field: ``EF { C6 nv code, C7 volatile data, C8 nv data }`` (§11.5.2.3.7)."""
    sys = b""
    for tag, value in ((0xC6, nv_code), (0xC7, volatile_data), (0xC8, nv_data)):
        if value is not None:
            sys += encode_tlv(tag, _quota(value))
    sys += bytes(extra)
    return encode_tlv(0xEF, sys) if sys else b""


def _quota(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise EncodingError(f"memory quota out of range: {value}")
    return value.to_bytes(2 if value <= 0xFFFF else 4, "big")


def install_parameters(app_specific: bytes = b"", *, volatile_quota: int | None = None,
                       nv_quota: int | None = None, system: bytes = b"", extra: bytes = b"") -> bytes:
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
        raise EncodingError("scp and i must be bytes")
    return bytes([0x81, 0x02, scp, i]) + bytes(extra)


def _install(p1: int, data: bytes, p2: int = 0x00) -> bytes:
    if len(data) > SHORT_MAX_DATA:
        raise EncodingError(f"INSTALL data of {len(data)} bytes exceeds a short APDU")
    return _apdu(CLA_GP, INS_INSTALL, p1, p2, data, le=256)


def install_for_load_data(elf_aid: bytes, sd_aid: bytes = b"", lfdb_hash: bytes = b"",
                          load_params: bytes = b"") -> bytes:
    """INSTALL [for load] data without the token field (§11.5.2.3.1, Table 11-45)."""
    return (_lv(_check_aid(elf_aid, "Load File AID"), "AID") + _lv(_check_aid(sd_aid, "SD AID", True), "AID")
            + _lv(lfdb_hash, "hash") + _lv_ber(load_params))


def install_for_load(elf_aid: bytes, sd_aid: bytes = b"", lfdb_hash: bytes = b"", load_params: bytes = b"",
                     token: bytes = b"", *, p2: int = 0x00) -> bytes:
    """INSTALL [for load]: ``80 E6 02 00`` (§11.5.2.3.1). Hash = LFDB hash (§C.2) when DAP/DM needs it."""
    data = install_for_load_data(elf_aid, sd_aid, lfdb_hash, load_params) + _lv_ber(token)
    return _install(INSTALL_FOR_LOAD, data, p2)


def install_for_install_data(elf_aid: bytes, module_aid: bytes, app_aid: bytes,
                             privileges: Privileges | bytes = b"\x00",
                             params: bytes = b"\xc9\x00") -> bytes:
    """INSTALL [for install] data without the token field (§11.5.2.3.2)."""
    return (_lv(_check_aid(elf_aid, "ELF AID"), "AID") + _lv(_check_aid(module_aid, "module AID"), "AID")
            + _lv(_check_aid(app_aid, "application AID"), "AID")
            + _lv(_privileges_bytes(privileges), "privileges") + _lv_ber(params))


def install_for_install(elf_aid: bytes, module_aid: bytes, app_aid: bytes | None = None,
                        privileges: Privileges | bytes = b"\x00", params: bytes = b"\xc9\x00",
                        token: bytes = b"", *, make_selectable: bool = True, p2: int = 0x00) -> bytes:
    """INSTALL [for install] (P1 ``04``) or [for install and make selectable] (P1 ``0C``)."""
    p1 = INSTALL_FOR_INSTALL | (INSTALL_FOR_MAKE_SELECTABLE if make_selectable else 0)
    data = install_for_install_data(elf_aid, module_aid, app_aid or module_aid, privileges, params)
    return _install(p1, data + _lv_ber(token), p2)


def install_for_make_selectable_data(app_aid: bytes, privileges: Privileges | bytes = b"\x00",
                                     params: bytes = b"") -> bytes:
    """INSTALL [for make selectable] data without token (§11.5.2.3.3)."""
    return (b"\x00\x00" + _lv(_check_aid(app_aid, "application AID"), "AID")
            + _lv(_privileges_bytes(privileges), "privileges") + _lv_ber(params))


def install_for_make_selectable(app_aid: bytes, privileges: Privileges | bytes = b"\x00", params: bytes = b"",
                                token: bytes = b"") -> bytes:
    """INSTALL [for make selectable]: ``80 E6 08 00`` (§11.5.2.3.3)."""
    data = install_for_make_selectable_data(app_aid, privileges, params) + _lv_ber(token)
    return _install(INSTALL_FOR_MAKE_SELECTABLE, data)


def install_for_extradition_data(sd_aid: bytes, aid: bytes, params: bytes = b"") -> bytes:
    """INSTALL [for extradition] data without token (§11.5.2.3.4, Table 11-47)."""
    return (_lv(_check_aid(sd_aid, "SD AID"), "AID") + b"\x00" + _lv(_check_aid(aid, "AID"), "AID")
            + b"\x00" + _lv_ber(params))


def install_for_extradition(sd_aid: bytes, aid: bytes, params: bytes = b"", token: bytes = b"") -> bytes:
    """INSTALL [for extradition]: move an application or ELF to another SD (``80 E6 10 00``)."""
    return _install(INSTALL_FOR_EXTRADITION, install_for_extradition_data(sd_aid, aid, params) + _lv_ber(token))


def install_for_registry_update_data(app_aid: bytes, sd_aid: bytes = b"",
                                     privileges: Privileges | bytes = b"", params: bytes = b"") -> bytes:
    """INSTALL [for registry update] data without token (§11.5.2.3.5)."""
    return (_lv(_check_aid(sd_aid, "SD AID", True), "AID") + b"\x00"
            + _lv(_check_aid(app_aid, "application AID"), "AID")
            + _lv(_privileges_bytes(privileges) if privileges else b"", "privileges") + _lv_ber(params))


def install_for_registry_update(app_aid: bytes, sd_aid: bytes = b"", privileges: Privileges | bytes = b"",
                                params: bytes = b"", token: bytes = b"") -> bytes:
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
        return {INSTALL_FOR_MAKE_SELECTABLE: "make_selectable", INSTALL_FOR_EXTRADITION: "extradition",
                INSTALL_FOR_PERSONALIZATION: "personalization",
                INSTALL_FOR_REGISTRY_UPDATE: "registry_update"}.get(p, "unknown")


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
        cmd = InstallCommand(p1, elf_aid=lv(aid="ELF AID", required=True), sd_aid=lv(aid="SD AID"),
                             lfdb_hash=lv(), params=ber_lv(), token=token())
    elif kind in ("install", "install_and_make_selectable"):
        cmd = InstallCommand(p1, elf_aid=lv(aid="ELF AID", required=True),
                             module_aid=lv(aid="module AID", required=True),
                             app_aid=lv(aid="application AID", required=True), privileges=lv(),
                             params=ber_lv(), token=token())
    elif kind == "make_selectable":
        zero(), zero()
        cmd = InstallCommand(p1, app_aid=lv(aid="application AID", required=True), privileges=lv(),
                             params=ber_lv(), token=token())
    elif kind == "extradition":
        sd = lv(aid="SD AID", required=True)
        zero()
        app = lv(aid="AID", required=True)
        zero()
        cmd = InstallCommand(p1, sd_aid=sd, app_aid=app, params=ber_lv(), token=token())
    elif kind == "registry_update":
        sd = lv(aid="SD AID")
        zero()
        cmd = InstallCommand(p1, sd_aid=sd, app_aid=lv(aid="application AID", required=True), privileges=lv(),
                             params=ber_lv(), token=token())
    elif kind == "personalization":
        zero(), zero()
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


# ---------------------------------------------------------------------------------------------
# LOAD (§11.6)
# ---------------------------------------------------------------------------------------------


def dap_block(sd_aid: bytes, signature: bytes) -> bytes:
    """DAP block ``E2 { 4F <SD AID>, C3 <LFDB signature> }`` preceding the LFDB (§11.6.2.3)."""
    return encode_tlv(0xE2, encode_tlv(0x4F, _check_aid(sd_aid, "SD AID")) + encode_tlv(0xC3, signature))


def load_stream(lfdb: bytes, dap_blocks: Iterable[bytes | tuple[bytes, bytes]] = ()) -> bytes:
    """All LOAD data: ``[DAP blocks] C4 <BER length> <LFDB>`` (§11.6.2.3)."""
    head = b""
    for blk in dap_blocks:
        head += dap_block(*blk) if isinstance(blk, tuple) else bytes(blk)
    return head + encode_tlv(0xC4, lfdb)


@dataclass(frozen=True)
class LoadPlan:
    """How to send one LFDB: block size, extended APDUs or not, and the number of LOAD commands."""

    block_size: int
    extended: bool
    blocks: int


def plan_load(lfdb: bytes, short_max: int, extended_max: int | None = None, extended_ok: bool = False,
              *, dap_blocks: Sequence[bytes | tuple[bytes, bytes]] = ()) -> LoadPlan:
    """Choose the block size: short APDUs when ≤ 256 blocks suffice, else extended length if the
    card supports it (``extended_ok``) and blocks of ``extended_max`` bring it to ≤ 256; else LoadError.

    ``short_max`` / ``extended_max`` are the plain bytes one command may carry after SCP overhead
    (the secure channel's ``max_data_length()``: 239 for C-DEC + C-MAC S8, 223 for S16).
    """
    total = len(load_stream(lfdb, dap_blocks))
    if not 1 <= short_max <= SHORT_MAX_DATA:
        raise LoadError(f"short block size must be 1..{SHORT_MAX_DATA}, got {short_max}")
    n = math.ceil(total / short_max)
    if n <= MAX_LOAD_BLOCKS:
        return LoadPlan(short_max, False, n)
    if extended_ok and extended_max:
        if not short_max <= extended_max <= EXTENDED_MAX_DATA:
            raise LoadError(f"extended block size must be {short_max}..{EXTENDED_MAX_DATA}, got {extended_max}")
        n = math.ceil(total / extended_max)
        if n <= MAX_LOAD_BLOCKS:
            return LoadPlan(extended_max, True, n)
        raise LoadError(
            f"load file of {total} bytes needs {n} LOAD blocks even with extended-length blocks of "
            f"{extended_max} bytes; the block number is one byte (at most {MAX_LOAD_BLOCKS} blocks)"
        )
    raise LoadError(
        f"load file of {total} bytes needs {n} LOAD blocks of {short_max} bytes; the block number is "
        f"one byte (at most {MAX_LOAD_BLOCKS} blocks) and extended length is "
        f"{'not supported by the card' if not extended_ok else 'not configured'}"
    )


def load_commands(lfdb: bytes, max_block: int, *, dap_blocks: Sequence[bytes | tuple[bytes, bytes]] = (),
                  extended_ok: bool = False) -> list[bytes]:
    """LOAD commands ``80 E8 P1 P2`` for ``C4 <len> <lfdb>`` (§11.6.2): P1 ``80`` on the last block,
    else ``00``; P2 the block number 0..255. Each block carries at most ``max_block`` plain bytes.

    More than 256 blocks raises LoadError (never wraps). Blocks over 255 bytes need ``extended_ok``.
    """
    if not isinstance(max_block, int) or max_block < 1:
        raise LoadError(f"max_block must be a positive int, got {max_block!r}")
    if max_block > SHORT_MAX_DATA and not extended_ok:
        raise LoadError(f"blocks of {max_block} bytes need extended-length APDUs (extended_ok=False)")
    if max_block > EXTENDED_MAX_DATA:
        raise LoadError(f"max_block {max_block} exceeds the extended-length maximum {EXTENDED_MAX_DATA}")
    stream = load_stream(lfdb, dap_blocks)
    n = math.ceil(len(stream) / max_block)
    if n > MAX_LOAD_BLOCKS:
        raise LoadError(
            f"load file needs {n} LOAD blocks of {max_block} bytes but the block number is one byte "
            f"(at most {MAX_LOAD_BLOCKS}); use larger (extended-length) blocks — see plan_load()"
        )
    out = []
    for i in range(n):
        block = stream[i * max_block : (i + 1) * max_block]
        p1 = 0x80 if i == n - 1 else 0x00
        out.append(_apdu(CLA_GP, INS_LOAD, p1, i, block, le=256, extended=len(block) > SHORT_MAX_DATA))
    return out


# ---------------------------------------------------------------------------------------------
# DELETE (§11.2), SET STATUS (§11.10), STORE DATA (§11.11), PUT KEY (§11.8)
# ---------------------------------------------------------------------------------------------


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
        raise EncodingError("DELETE key needs a key identifier and/or a key version number")
    return _apdu(CLA_GP, INS_DELETE, 0x00, 0x00, data, le=256)


def set_status(p1: int, state: int, aid: bytes = b"") -> bytes:
    """SET STATUS ``80 F0 P1 P2 [AID]`` (§11.10.2): P1 ``80`` card (ISD, no AID), ``40`` application
    or SD, ``60`` SD and its associated applications; P2 the new life cycle state (card: e.g. ``7F``
    CARD_LOCKED; application/SD: ``80`` to lock, ``00`` to unlock, or an application-specific state)."""
    if p1 not in (SET_STATUS_ISD, SET_STATUS_APP, SET_STATUS_SD_AND_APPS):
        raise EncodingError(f"SET STATUS P1 must be 80, 40 or 60, got {p1:02X}")
    if not 0 <= state <= 0xFF:
        raise EncodingError("life cycle state must be a byte")
    data = _check_aid(aid, allow_empty=p1 == SET_STATUS_ISD)
    if p1 == SET_STATUS_ISD and data:
        raise EncodingError("SET STATUS for the card (P1 80) carries no AID")
    return _apdu(CLA_GP, INS_SET_STATUS, p1, state, data)


STORE_DATA_LAST = 0x80
STORE_DATA_ENC_APP = 0x20  # b7-b6 = 01: application dependent encryption
STORE_DATA_ENC = 0x60  # b7-b6 = 11: encrypted data
STORE_DATA_DGI = 0x08  # b5-b4 = 01: DGI format
STORE_DATA_BER = 0x10  # b5-b4 = 10: BER-TLV format


def store_data(block: bytes, block_number: int, *, last: bool, flags: int = 0) -> bytes:
    """One STORE DATA ``80 E2 P1 P2`` (§11.11.2): P1 b8 last block, b7-b6 encryption, b5-b4 format
    (``flags`` from STORE_DATA_*), P2 the block number."""
    if not 0 <= block_number <= 0xFF:
        raise EncodingError(f"STORE DATA block number {block_number} is not a byte")
    if flags & ~0x7F:
        raise EncodingError("flags must not set the last-block bit; use last=")
    p1 = flags | (STORE_DATA_LAST if last else 0)
    return _apdu(CLA_GP, INS_STORE_DATA, p1, block_number, block, le=256)


def store_data_commands(data: bytes | Sequence[bytes], *, max_block: int = SHORT_MAX_DATA,
                        flags: int = 0) -> list[bytes]:
    """STORE DATA sequence: ``data`` is split into blocks of ``max_block``, or given as a list of
    blocks (e.g. one DGI/TLV each); block numbers from 0, last-block bit on the last one."""
    if isinstance(data, bytes | bytearray):
        if not 1 <= max_block <= SHORT_MAX_DATA:
            raise EncodingError(f"max_block must be 1..{SHORT_MAX_DATA}")
        raw = bytes(data)
        blocks = [raw[i : i + max_block] for i in range(0, len(raw), max_block)] or [b""]
    else:
        blocks = [bytes(b) for b in data]
    if not blocks or len(blocks) > 256:
        raise EncodingError(f"STORE DATA needs 1..256 blocks, got {len(blocks)}")
    return [store_data(b, i, last=i == len(blocks) - 1, flags=flags) for i, b in enumerate(blocks)]


def put_key(new_kvn: int, key_data: bytes, *, old_kvn: int = 0x00, key_id: int = 0x01,
            multiple: bool = True) -> bytes:
    """PUT KEY ``80 D8 P1 P2 <new KVN> <key data fields> 00`` (§11.8.2).

    P1 = KVN being replaced (``00`` adds a new key set); P2 = first key identifier, b8 set when
    several keys follow. ``key_data`` comes already encoded (``gp.keys``).
    """
    for name, v in (("new_kvn", new_kvn), ("old_kvn", old_kvn)):
        if not 0 <= v <= 0x7F:
            raise EncodingError(f"{name} must be 0..7F, got {v:#x}")
    if not 0 <= key_id <= 0x7F:
        raise EncodingError(f"key_id must be 0..7F, got {key_id:#x}")
    p2 = key_id | (0x80 if multiple else 0)
    return _apdu(CLA_GP, INS_PUT_KEY, old_kvn, p2, bytes([new_kvn]) + bytes(key_data), le=256)


def parse_tlv_response(data: bytes) -> list[Tlv]:
    """Convenience: decode any BER-TLV response."""
    return decode_all(data)
