"""A card manufacturer's personalisation file (format ``ecard-manufacturer-file/1``): reader and writer.

JSON Lines, specified in docs/manufacturer-file.md: line 1 is the header (manufacturer, IIN,
transport key check value, the token verification key the cards hold, card count), then one card
per line (card number, CIN, CPLC, KDD, SCP and ``i``, ISD KVN, and the ISD ENC/MAC/DEK, receipt and
initial SSD keys each wrapped under the transport key with AES Key Wrap, RFC 3394, with its key
check value), and a trailer line with the card count and an HMAC-SHA256 of every byte before it
under a key derived from the transport key.

:func:`read` checks everything and returns the cards with their clear keys, or raises
:class:`FileRefused` listing ``line N: what is wrong`` for the first :data:`MAX_ERRORS` problems.
:func:`write` is the manufacturer's side (tests, the benchmark, ``cardsim make-manufacturer-file``).

Pure: the stdlib and ``cryptography``. Error messages never contain key material.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from gp.commands import CPLC, CPLC_FIELDS, parse_cplc
from gp.errors import GPError
from gp.keys import StaticKeys, kcv_des

FORMAT = "ecard-manufacturer-file/1"
MAX_CARDS = 100_000
MAX_ERRORS = 20
TOKEN_KVN = 0x70  # the ISD's Token Verification key (GP 2.3.1 §9.2.2)
RECEIPT_KVN = 0x71  # the ISD's Receipt key (GP 2.3.1 §9.2.3)
SSD_INITIAL_KVN = {0x02: 0x20, 0x03: 0x30}  # a new SSD's key set before its owner's PUT KEY
# The secure channel options the platform runs: R-MAC on every response (docs/threat-model.md).
SUPPORTED_I = {0x02: 0x55, 0x03: 0x70}  # SCP02 i=55 (GP 2.3.1 §E.1.1), SCP03 i=70 (Amd D §5.1)
ISD_KVNS = range(0x01, 0x70)  # 70..73 are the token, receipt and DAP keys; FF the initial key

HEADER_FIELDS = frozenset({"format", "manufacturer", "iin", "transport_kcv", "token_kvn", "token_key_sha256", "cards"})
WRAPPED_KEYS = ("isd_enc", "isd_mac", "isd_dek", "receipt", "ssd_initial")
CARD_FIELDS = frozenset(
    {"serial", "cin", "cplc", "kdd", "scp", "i", "isd_kvn"}
    | set(WRAPPED_KEYS)
    | {f"{name}_kcv" for name in WRAPPED_KEYS}
)
TRAILER_FIELDS = frozenset({"end", "cards", "mac"})

_HEX = re.compile(r"^(?:[0-9A-F]{2})+$")
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_MAC_INFO = FORMAT.encode("ascii") + b" file MAC"
_AES_KCV_BLOCK = b"\x01" * 16


class FileRefused(ValueError):
    """The file is refused as a whole. ``errors`` are ``(line, message)`` pairs, in line order."""

    def __init__(self, errors: list[tuple[int, str]], more: bool = False) -> None:
        self.errors = errors
        self.more = more
        text = "; ".join(f"line {line}: {message}" for line, message in errors)
        super().__init__(text + ("; (further errors not listed)" if more else ""))


@dataclass(frozen=True)
class Header:
    manufacturer: str
    iin: str
    transport_kcv: str
    token_key_sha256: str
    cards: int


@dataclass(frozen=True)
class CardKeys:
    """One card as the manufacturer personalised it. Holds clear keys: never log or render it."""

    serial: str
    cin: str
    cplc: CPLC
    kdd: str
    scp: int
    i: int
    isd_keys: StaticKeys  # its ``version`` is the ISD KVN
    receipt_key: bytes = field(repr=False)
    ssd_initial_key: bytes = field(repr=False)
    line: int = 0
    kcvs: dict[str, str] = field(default_factory=dict)  # {"isd_enc": KCV, ...} as checked on reading

    @property
    def algorithm(self) -> str:
        """How the card uses its 16-byte keys: ``aes`` (SCP03) or ``3des`` (SCP02)."""
        return "aes" if self.scp == 0x03 else "3des"

    @property
    def ssd_initial_kvn(self) -> int:
        return SSD_INITIAL_KVN[self.scp]

    def __repr__(self) -> str:
        return f"CardKeys(serial={self.serial!r}, cin={self.cin!r}, scp={self.scp:02X}, keys=<hidden>)"


@dataclass(frozen=True)
class ManufacturerFile:
    header: Header
    cards: list[CardKeys]
    sha256: str  # of the whole file


def kcv(algorithm: str, key: bytes) -> str:
    """GP key check value: AES, the first 3 bytes of AES-ECB(key, 16 × 01) (Amd D §7.1.1); 3DES,
    the first 3 bytes of 3DES-ECB(key, 8 × 00) (GP 2.3.1 §11.8.2.3.1). The AES one is computed
    here with a single cipher context (``gp.keys.kcv_aes`` prepares the four a secure channel
    needs): a file has five keys per card to check."""
    if algorithm == "aes":
        encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block, the KCV rule
        return encryptor.update(_AES_KCV_BLOCK)[:3].hex().upper()
    return kcv_des(key).hex().upper()


def token_key_sha256(spki_der: bytes) -> str:
    """How the file names the token verification key: SHA-256 of its DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der).hexdigest()


def _mac_key(transport_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO).derive(transport_key)


def file_mac(transport_key: bytes, body: bytes) -> str:
    """The trailer's MAC: HMAC-SHA256 over every byte before the trailer line (RFC 2104), keyed
    with HKDF-SHA256(transport key, info "ecard-manufacturer-file/1 file MAC") (RFC 5869)."""
    return hmac.new(_mac_key(transport_key), body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------- reading


class _Errors:
    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []
        self.more = False

    def add(self, line: int, message: str) -> None:
        if len(self.items) < MAX_ERRORS:
            self.items.append((line, message))
        else:
            self.more = True

    @property
    def full(self) -> bool:
        return self.more


class _LineError(Exception):
    pass


def _lines(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line without its LF, offset of the line's first byte)."""
    offset = 0
    number = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        end = len(data) if end < 0 else end
        number += 1
        yield number, data[offset:end], offset
        offset = end + 1


def _object(raw: bytes, fields: frozenset[str], what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _LineError(f"not a JSON object ({what} expected)") from None
    if not isinstance(value, dict):
        raise _LineError(f"not a JSON object ({what} expected)")
    missing = sorted(fields - value.keys())
    unknown = sorted(value.keys() - fields)
    if missing:
        raise _LineError(f"{what} lacks {', '.join(missing)}")
    if unknown:
        raise _LineError(f"{what} has unknown field(s) {', '.join(unknown)}")
    return value


def _hex(value: Any, name: str, *, lengths: Iterable[int] | None = None, low: int = 1, high: int = 64) -> bytes:
    if not isinstance(value, str) or not _HEX.match(value):
        raise _LineError(f"{name} is not upper-case hexadecimal")
    raw = bytes.fromhex(value)
    allowed = set(lengths) if lengths is not None else None
    if (allowed is not None and len(raw) not in allowed) or (allowed is None and not low <= len(raw) <= high):
        expected = " or ".join(str(n) for n in sorted(allowed)) if allowed else f"{low} to {high}"
        raise _LineError(f"{name} is {len(raw)} bytes ({expected} expected)")
    return raw


def _byte(value: Any, name: str) -> int:
    return _hex(value, name, lengths=(1,))[0]


def _header(raw: bytes) -> Header:
    value = _object(raw, HEADER_FIELDS, "the header")
    if value["format"] != FORMAT:
        raise _LineError(f"format {str(value['format'])[:40]!r} is not {FORMAT}")
    manufacturer = value["manufacturer"]
    if not isinstance(manufacturer, str) or not 1 <= len(manufacturer.strip()) <= 100:
        raise _LineError("manufacturer must be a name of 1 to 100 characters")
    iin = _hex(value["iin"], "iin", low=1, high=16).hex().upper()
    transport_kcv = _hex(value["transport_kcv"], "transport_kcv", lengths=(3,)).hex().upper()
    if _byte(value["token_kvn"], "token_kvn") != TOKEN_KVN:
        raise _LineError(f"token_kvn must be {TOKEN_KVN:02X} (the ISD's Token Verification key)")
    token_hash = value["token_key_sha256"]
    if not isinstance(token_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", token_hash):
        raise _LineError("token_key_sha256 must be 64 lower-case hex digits")
    cards = value["cards"]
    if not isinstance(cards, int) or isinstance(cards, bool) or not 1 <= cards <= MAX_CARDS:
        raise _LineError(f"cards must be a count of 1 to {MAX_CARDS}")
    return Header(manufacturer.strip(), iin, transport_kcv, token_hash, cards)


def read_header(data: bytes) -> Header:
    """The header alone (to find the transport key it names); :class:`FileRefused` on line 1."""
    first = data.split(b"\n", 1)[0]
    try:
        return _header(first)
    except _LineError as exc:
        raise FileRefused([(1, str(exc))]) from None


def _unwrap(transport_key: bytes, value: Any, name: str, lengths: tuple[int, ...]) -> bytes:
    wrapped = _hex(value, name, lengths=tuple(n + 8 for n in lengths))
    try:
        return aes_key_unwrap(transport_key, wrapped)
    except InvalidUnwrap:
        raise _LineError(
            f"{name} does not unwrap under the transport key (a wrong transport key, or an altered value)"
        ) from None


def _checked(algorithm: str, key: bytes, value: Any, name: str) -> str:
    given = _hex(value, f"{name}_kcv", lengths=(3,)).hex().upper()
    if not hmac.compare_digest(given, kcv(algorithm, key)):
        raise _LineError(f"{name}_kcv {given} does not match the key's check value")
    return given


def _card(raw: bytes, transport_key: bytes, line: int) -> CardKeys:
    value = _object(raw, CARD_FIELDS, "a card")
    serial = value["serial"]
    if not isinstance(serial, str) or not _SERIAL.match(serial):
        raise _LineError("serial must be 1 to 32 letters, digits, '.', '_' or '-'")
    cin = _hex(value["cin"], "cin", low=4, high=16).hex().upper()
    cplc_raw = _hex(value["cplc"], "cplc", low=42, high=128)
    try:
        cplc = parse_cplc(cplc_raw)
    except GPError as exc:
        raise _LineError(f"cplc does not parse: {exc}") from None
    kdd = _hex(value["kdd"], "kdd", lengths=(10,)).hex().upper()
    scp = _byte(value["scp"], "scp")
    if scp not in SUPPORTED_I:
        raise _LineError(f"scp {scp:02X} is not supported (02 or 03)")
    i = _byte(value["i"], "i")
    if i != SUPPORTED_I[scp]:
        raise _LineError(
            f"SCP{scp:02X} i={i:02X} is not supported (i={SUPPORTED_I[scp]:02X}: the platform needs R-MAC)"
        )
    isd_kvn = _byte(value["isd_kvn"], "isd_kvn")
    if isd_kvn not in ISD_KVNS:
        raise _LineError(f"isd_kvn {isd_kvn:02X} is outside 01..6F")
    algorithm = "aes" if scp == 0x03 else "3des"
    lengths = (16, 24, 32) if scp == 0x03 else (16,)
    keys: dict[str, bytes] = {}
    kcvs: dict[str, str] = {}
    for name in WRAPPED_KEYS:
        key = _unwrap(transport_key, value[name], name, lengths)
        kcvs[name] = _checked(algorithm, key, value[f"{name}_kcv"], name)
        keys[name] = key
    if not len(keys["isd_enc"]) == len(keys["isd_mac"]) == len(keys["isd_dek"]):
        raise _LineError("isd_enc, isd_mac and isd_dek must have the same length")
    return CardKeys(
        serial=serial,
        cin=cin,
        cplc=cplc,
        kdd=kdd,
        scp=scp,
        i=i,
        isd_keys=StaticKeys(keys["isd_enc"], keys["isd_mac"], keys["isd_dek"], isd_kvn),
        receipt_key=keys["receipt"],
        ssd_initial_key=keys["ssd_initial"],
        line=line,
        kcvs=kcvs,
    )


def _trailer(raw: bytes, transport_key: bytes, body: bytes, count: int, header: Header | None) -> None:
    value = _object(raw, TRAILER_FIELDS, "the trailer")
    if value["end"] is not True:
        raise _LineError('the trailer must say "end": true')
    if value["cards"] != count or isinstance(value["cards"], bool):
        raise _LineError(f"the trailer's card count is not {count}, the number of card lines")
    if header is not None and header.cards != count:
        raise _LineError(f"the header announces {header.cards} cards, the file lists {count}")
    mac = value["mac"]
    if not isinstance(mac, str) or not hmac.compare_digest(mac, file_mac(transport_key, body)):
        raise _LineError("the file MAC does not verify (the file was altered, or another transport key made it)")


def read(data: bytes, transport_key: bytes) -> ManufacturerFile:
    """Every line checked; the cards with their clear keys, or :class:`FileRefused`."""
    if len(transport_key) not in (16, 24, 32):
        raise ValueError("the transport key is an AES-128, -192 or -256 key")
    errors = _Errors()
    lines = list(_lines(data))
    if not data.endswith(b"\n"):
        errors.add(len(lines) or 1, "the file does not end with a line feed (truncated?)")
    if len(lines) < 3:
        errors.add(max(len(lines), 1), "a header, at least one card and a trailer are needed")
        raise FileRefused(errors.items)
    header: Header | None = None
    try:
        header = _header(lines[0][1])
        if header.transport_kcv != kcv("aes", transport_key):
            errors.add(1, f"transport_kcv {header.transport_kcv} is not the check value of the transport key given")
    except _LineError as exc:
        errors.add(1, str(exc))
    cards: list[CardKeys] = []
    seen_serial: dict[str, int] = {}
    seen_cin: dict[str, int] = {}
    for number, raw, _offset in lines[1:-1]:
        if errors.full:
            break
        try:
            card = _card(raw, transport_key, number)
        except _LineError as exc:
            errors.add(number, str(exc))
            continue
        if card.serial in seen_serial:
            errors.add(number, f"card number {card.serial} is already on line {seen_serial[card.serial]}")
        elif card.cin in seen_cin:
            errors.add(number, f"CIN {card.cin} is already on line {seen_cin[card.cin]}")
        seen_serial.setdefault(card.serial, number)
        seen_cin.setdefault(card.cin, number)
        cards.append(card)
    last_number, last_raw, last_offset = lines[-1]
    if not errors.full:
        try:
            _trailer(last_raw, transport_key, data[:last_offset], len(lines) - 2, header)
        except _LineError as exc:
            errors.add(last_number, str(exc))
    if errors.items or header is None:
        raise FileRefused(errors.items, errors.more)
    return ManufacturerFile(header=header, cards=cards, sha256=hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------------------- writing


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii") + b"\n"


def card_line(card: CardKeys, transport_key: bytes) -> bytes:
    value: dict[str, Any] = {
        "serial": card.serial,
        "cin": card.cin,
        "cplc": card.cplc.to_bytes().hex().upper(),
        "kdd": card.kdd,
        "scp": f"{card.scp:02X}",
        "i": f"{card.i:02X}",
        "isd_kvn": f"{card.isd_keys.version:02X}",
    }
    keys = {
        "isd_enc": card.isd_keys.enc,
        "isd_mac": card.isd_keys.mac,
        "isd_dek": card.isd_keys.dek,
        "receipt": card.receipt_key,
        "ssd_initial": card.ssd_initial_key,
    }
    for name, key in keys.items():
        value[name] = aes_key_wrap(transport_key, key).hex().upper()
        value[f"{name}_kcv"] = kcv(card.algorithm, key)
    return _dump(value)


def header_line(*, manufacturer: str, iin: str, transport_key: bytes, token_key_sha256: str, cards: int) -> bytes:
    return _dump(
        {
            "format": FORMAT,
            "manufacturer": manufacturer,
            "iin": iin,
            "transport_kcv": kcv("aes", transport_key),
            "token_kvn": f"{TOKEN_KVN:02X}",
            "token_key_sha256": token_key_sha256,
            "cards": cards,
        }
    )


def trailer_line(body: bytes, transport_key: bytes, cards: int) -> bytes:
    return _dump({"end": True, "cards": cards, "mac": file_mac(transport_key, body)})


def seal(lines: list[bytes], transport_key: bytes) -> bytes:
    """Header and card lines (each ending in LF) followed by their trailer."""
    body = b"".join(lines)
    return body + trailer_line(body, transport_key, len(lines) - 1)


def write(cards: list[CardKeys], *, transport_key: bytes, manufacturer: str, iin: str, token_key_sha256: str) -> bytes:
    """The manufacturer's file for ``cards``."""
    head = header_line(
        manufacturer=manufacturer,
        iin=iin,
        transport_key=transport_key,
        token_key_sha256=token_key_sha256,
        cards=len(cards),
    )
    return seal([head, *(card_line(card, transport_key) for card in cards)], transport_key)


def sample_cplc(serial_number: bytes) -> CPLC:
    values = {name: bytes(n) for name, n in CPLC_FIELDS}
    values.update(
        ic_fabricator=bytes.fromhex("4790"),
        ic_type=bytes.fromhex("5167"),
        os_id=bytes.fromhex("4791"),
        os_release_date=bytes.fromhex("2097"),
        ic_serial_number=serial_number[-4:].rjust(4, b"\x00"),
    )
    return CPLC(**values)


def random_cards(
    count: int,
    *,
    scp: int = 0x03,
    serial_prefix: str = "MF",
    random: Callable[[int], bytes] = secrets.token_bytes,
) -> list[CardKeys]:
    """``count`` cards with random CINs, KDDs and keys (the manufacturer's side of tests and the benchmark)."""
    cards = []
    for _ in range(count):
        cin = random(8)
        key_length = 16
        cards.append(
            CardKeys(
                serial=f"{serial_prefix}{cin.hex().upper()}",
                cin=cin.hex().upper(),
                cplc=sample_cplc(cin),
                kdd=random(10).hex().upper(),
                scp=scp,
                i=SUPPORTED_I[scp],
                isd_keys=StaticKeys(
                    random(key_length), random(key_length), random(key_length), 0x30 if scp == 3 else 0x20
                ),
                receipt_key=random(16),
                ssd_initial_key=random(16),
            )
        )
    return cards
