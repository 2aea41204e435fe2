"""BER-TLV as used by GlobalPlatform (ISO/IEC 7816-4 §5.2, the X.690 subset GP relies on).

Rules implemented (GP Card Spec 2.3.1 §11.1.6 refers to ISO/IEC 7816-4 for BER-TLV):

* Tags: one byte, or a first byte whose low five bits are ``11111`` followed by subsequent
  bytes with bit 8 set on every byte but the last (X.690 §8.1.2.4). The first subsequent byte
  may not be ``80`` (X.690 forbids the leading zero group). At most four tag bytes.
  First bytes ``00`` and ``FF`` are not tags (ISO 7816-4 uses them as padding); they are rejected.
* ``constructed`` is bit 6 (``0x20``) of the first tag byte.
* Lengths: definite only. ``00..7F`` in one byte, ``81 xx``, ``82 xxxx``, ``83 xxxxxx``,
  ``84 xxxxxxxx``. ``80`` (indefinite, X.690) and ``85..FF`` are rejected.
* Non-minimal long-form lengths (``81 05``) are *accepted* when decoding: ISO 7816-4 §5.2.2.2
  explicitly defines ``81`` with a following byte ``00..FF`` (unlike DER), and real cards and
  personalisation scripts emit ``81 xx`` for xx < 128. Encoding is always minimal.

Tags are represented as ints of their big-endian bytes: ``0x9F7F``, ``0x4F``, ``0xBF0C``.
Every malformed input raises :class:`gp.errors.TLVError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gp.errors import TLVError

__all__ = [
    "Tlv",
    "decode_all",
    "decode_length",
    "decode_one",
    "encode_length",
    "encode_tlv",
    "find",
    "find_all",
    "tag_bytes",
]

_MAX_TAG_BYTES = 4
_MAX_LENGTH = 0xFFFFFFFF


def tag_bytes(tag: int) -> bytes:
    """The encoded bytes of ``tag`` (an int of the big-endian tag bytes); validates the form."""
    if not isinstance(tag, int) or isinstance(tag, bool) or tag <= 0 or tag > 0xFFFFFFFF:
        raise TLVError(f"invalid tag value {tag!r}")
    raw = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    _check_tag(raw)
    return raw


def _check_tag(raw: bytes) -> None:
    first = raw[0]
    if first in (0x00, 0xFF):
        raise TLVError(f"tag first byte {first:02X} is padding, not a tag")
    if first & 0x1F != 0x1F:
        if len(raw) != 1:
            raise TLVError(f"tag {raw.hex().upper()}: single-byte tag form followed by more bytes")
        return
    if len(raw) < 2:
        raise TLVError(f"tag {raw.hex().upper()}: multi-byte tag without subsequent bytes")
    if raw[1] == 0x80:
        raise TLVError(f"tag {raw.hex().upper()}: first subsequent byte 80 is not allowed")
    for b in raw[1:-1]:
        if not b & 0x80:
            raise TLVError(f"tag {raw.hex().upper()}: continuation bit missing")
    if raw[-1] & 0x80:
        raise TLVError(f"tag {raw.hex().upper()}: last tag byte has the continuation bit set")


def encode_length(length: int) -> bytes:
    """Minimal definite BER length (ISO 7816-4 §5.2.2.2)."""
    if not isinstance(length, int) or length < 0 or length > _MAX_LENGTH:
        raise TLVError(f"length {length!r} cannot be encoded")
    if length < 0x80:
        return bytes([length])
    n = (length.bit_length() + 7) // 8
    return bytes([0x80 | n]) + length.to_bytes(n, "big")


def encode_tlv(tag: int, value: bytes) -> bytes:
    """Tag || length || value."""
    value = bytes(value)
    return tag_bytes(tag) + encode_length(len(value)) + value


def _decode_tag(data: bytes, offset: int) -> tuple[int, int]:
    end = len(data)
    if offset >= end:
        raise TLVError("truncated: tag expected")
    first = data[offset]
    i = offset + 1
    if first & 0x1F == 0x1F:
        while True:
            if i >= end:
                raise TLVError(f"truncated multi-byte tag at offset {offset}")
            b = data[i]
            i += 1
            if i - offset > _MAX_TAG_BYTES:
                raise TLVError(f"tag at offset {offset} longer than {_MAX_TAG_BYTES} bytes")
            if not b & 0x80:
                break
    raw = data[offset:i]
    _check_tag(raw)
    return int.from_bytes(raw, "big"), i


def decode_length(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a BER length at ``offset``; returns ``(length, offset after the length)``."""
    if offset >= len(data):
        raise TLVError("truncated: length expected")
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    if first == 0x80:
        raise TLVError("indefinite length (80) is not allowed")
    n = first & 0x7F
    if n > 4:
        raise TLVError(f"length form {first:02X} not supported (at most 4 length bytes)")
    if offset + 1 + n > len(data):
        raise TLVError("truncated length field")
    return int.from_bytes(data[offset + 1 : offset + 1 + n], "big"), offset + 1 + n


def decode_one(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """Decode the data object at ``offset``; returns it and the offset just after it."""
    data = bytes(data)
    tag, i = _decode_tag(data, offset)
    length, i = decode_length(data, i)
    if i + length > len(data):
        raise TLVError(f"tag {tag:X}: length {length} exceeds the {len(data) - i} bytes available")
    return Tlv(tag, data[i : i + length]), i + length


def decode_all(data: bytes) -> list[Tlv]:
    """Decode a concatenation of data objects; every byte must belong to one."""
    data = bytes(data)
    out: list[Tlv] = []
    offset = 0
    while offset < len(data):
        tlv, offset = decode_one(data, offset)
        out.append(tlv)
    return out


@dataclass(frozen=True)
class Tlv:
    """One BER-TLV data object."""

    tag: int
    value: bytes = b""

    def __post_init__(self) -> None:
        tag_bytes(self.tag)  # validates
        object.__setattr__(self, "value", bytes(self.value))

    @property
    def tag_bytes(self) -> bytes:
        return tag_bytes(self.tag)

    @property
    def constructed(self) -> bool:
        """Bit 6 of the first tag byte (ISO 7816-4 §5.2.2.1)."""
        return bool(self.tag_bytes[0] & 0x20)

    def children(self) -> list[Tlv]:
        """The data objects inside a constructed object."""
        if not self.constructed:
            raise TLVError(f"tag {self.tag:X} is primitive: it has no children")
        return decode_all(self.value)

    def find(self, tag: int, *, recursive: bool = False) -> Tlv | None:
        """First child with ``tag`` (depth-first when ``recursive``)."""
        return find(self.children(), tag, recursive=recursive)

    def find_all(self, tag: int, *, recursive: bool = False) -> list[Tlv]:
        return find_all(self.children(), tag, recursive=recursive)

    def encode(self) -> bytes:
        return encode_tlv(self.tag, self.value)

    def to_bytes(self) -> bytes:
        return self.encode()

    def __repr__(self) -> str:
        return f"Tlv(0x{self.tag:X}, {self.value.hex().upper()!r})"


def _iter(objs: bytes | Tlv | Iterable[Tlv], recursive: bool) -> Iterator[Tlv]:
    if isinstance(objs, bytes | bytearray | memoryview):
        objs = decode_all(bytes(objs))
    elif isinstance(objs, Tlv):
        objs = [objs]
    for obj in objs:
        yield obj
        if recursive and obj.constructed:
            yield from _iter(obj.children(), True)


def find(objs: bytes | Tlv | Iterable[Tlv], tag: int, *, recursive: bool = False) -> Tlv | None:
    """First object with ``tag`` among ``objs`` (bytes are decoded first)."""
    for obj in _iter(objs, recursive):
        if obj.tag == tag:
            return obj
    return None


def find_all(objs: bytes | Tlv | Iterable[Tlv], tag: int, *, recursive: bool = False) -> list[Tlv]:
    return [obj for obj in _iter(objs, recursive) if obj.tag == tag]
