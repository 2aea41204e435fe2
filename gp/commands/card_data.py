"""GET DATA (GPC 2.3.1 §11.3) and the data objects it reads: IIN/CIN/KDD/sequence counter, CPLC,
Card Recognition Data (§H.2) and Key Information (§11.3.3.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gp.commands._fields import _apdu
from gp.commands.constants import CLA_GP, INS_GET_DATA, TAG_CPLC, TAG_KDD, TAG_KEY_INFO, TAG_SEQUENCE_COUNTER
from gp.errors import InvalidCommandError, TLVError
from gp.tlv import decode_all, encode_tlv, find


def get_data(tag: int, *, cla: int = CLA_GP) -> bytes:
    """GET DATA: ``80 CA P1 P2 00`` with P1 P2 the tag (§11.3.2; CLA 00 also allowed)."""
    if not 0 < tag <= 0xFFFF:
        raise InvalidCommandError(f"GET DATA tag must fit in P1 P2, got {tag:X}")
    return _apdu(cla, INS_GET_DATA, tag >> 8, tag & 0xFF, le=256)


def get_certificate_store(kid: int, kvn: int, *, cla: int = CLA_GP) -> bytes:
    """GET DATA ``BF21`` naming an SCP11 key by ``A6 {83 KID KVN}``: its certificate store, the
    chain that ends with the key's certificate (GPC Amendment F §7.4.2)."""
    if not (0 <= kid <= 0xFF and 0 <= kvn <= 0xFF):
        raise InvalidCommandError("KID and KVN must be bytes")
    control = encode_tlv(0xA6, encode_tlv(0x83, bytes((kid, kvn))))
    return _apdu(cla, INS_GET_DATA, 0xBF, 0x21, control, le=256)


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
    0x80: "DES",
    0x81: "RFU",
    0x82: "3DES-CBC",
    0x83: "DES-ECB",
    0x84: "DES-CBC",
    0x85: "PSK-TLS",
    0x88: "AES",
    0x90: "HMAC-SHA1",
    0x91: "HMAC-SHA1-160",
    0xA0: "RSA-PUBLIC-E",
    0xA1: "RSA-PUBLIC-N",
    0xA2: "RSA-PRIVATE-N",
    0xA3: "RSA-PRIVATE-D",
    0xA4: "RSA-CRT-P",
    0xA5: "RSA-CRT-Q",
    0xA6: "RSA-CRT-PQ",
    0xA7: "RSA-CRT-DP1",
    0xA8: "RSA-CRT-DQ1",
    0xB0: "ECC-PUBLIC",
    0xB1: "ECC-PRIVATE",
    0xB2: "ECC-FIELD-P",
    0xB3: "ECC-A",
    0xB4: "ECC-B",
    0xB5: "ECC-G",
    0xB6: "ECC-N",
    0xB7: "ECC-K",
    0xF0: "ECC-KEY-PARAMETERS-REFERENCE",
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
