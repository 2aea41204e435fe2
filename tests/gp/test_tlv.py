"""BER-TLV encoding and decoding (gp.tlv)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gp.aids import ISD_AID
from gp.errors import GPError, TLVError
from gp.tlv import Tlv, decode_all, decode_length, decode_one, encode_length, encode_tlv, find, find_all


def test_single_byte_tag() -> None:
    assert encode_tlv(0x4F, ISD_AID) == bytes.fromhex("4F08A000000151000000")
    (t,) = decode_all(bytes.fromhex("4F08A000000151000000"))
    assert t.tag == 0x4F and t.value == ISD_AID
    assert not t.constructed


def test_multi_byte_tags() -> None:
    assert encode_tlv(0x9F7F, b"\x01") == bytes.fromhex("9F7F0101")
    assert encode_tlv(0x5F2D, b"") == bytes.fromhex("5F2D00")
    assert encode_tlv(0xBF8101, b"") == bytes.fromhex("BF810100")
    (t,) = decode_all(bytes.fromhex("9F700107"))
    assert t.tag == 0x9F70 and t.value == b"\x07"
    (t,) = decode_all(bytes.fromhex("BF810100"))
    assert t.tag == 0xBF8101 and t.constructed


@pytest.mark.parametrize(
    ("n", "enc"),
    [
        (0, "00"),
        (0x7F, "7F"),
        (0x80, "8180"),
        (0xFF, "81FF"),
        (0x100, "820100"),
        (0xFFFF, "82FFFF"),
        (0x10000, "83010000"),
        (0x1000000, "8401000000"),
    ],
)
def test_lengths(n: int, enc: str) -> None:
    assert encode_length(n) == bytes.fromhex(enc)
    assert decode_length(bytes.fromhex(enc)) == (n, len(enc) // 2)


def test_long_value_round_trip() -> None:
    value = bytes(range(256)) * 3
    enc = encode_tlv(0xC4, value)
    assert enc[:4] == bytes.fromhex("C4820300")
    (t,) = decode_all(enc)
    assert t.value == value


def test_non_minimal_length_accepted() -> None:
    # ISO 7816-4 §5.2.2.2 defines 81 followed by 00..FF; cards emit it.
    (t,) = decode_all(bytes.fromhex("4F8102AABB"))
    assert t.value == b"\xaa\xbb"


def test_constructed_children_and_find() -> None:
    fci = bytes.fromhex("6F108408A000000151000000A5049F650180")
    (t,) = decode_all(fci)
    assert t.constructed
    kids = t.children()
    assert [k.tag for k in kids] == [0x84, 0xA5]
    assert t.find(0x84).value == ISD_AID  # type: ignore[union-attr]
    assert t.find(0x9F65) is None
    assert t.find(0x9F65, recursive=True).value == b"\x80"  # type: ignore[union-attr]
    assert find(fci, 0x9F65, recursive=True) is not None
    assert find(fci, 0x84) is None  # top level only
    assert len(find_all(fci, 0x84, recursive=True)) == 1


def test_primitive_has_no_children() -> None:
    with pytest.raises(TLVError):
        Tlv(0x4F, b"\x01\x02").children()


def test_decode_one_offsets() -> None:
    data = bytes.fromhex("C10100C2020102")
    t, off = decode_one(data)
    assert (t.tag, off) == (0xC1, 3)
    t, off = decode_one(data, off)
    assert (t.tag, t.value, off) == (0xC2, b"\x01\x02", 7)


@pytest.mark.parametrize(
    "bad",
    [
        "4F",  # tag without length
        "4F05AABB",  # length beyond data
        "4F80AABB00",  # indefinite length
        "4F85000000000100",  # 5 length bytes
        "4F82AA",  # truncated length field
        "9F",  # truncated multi-byte tag
        "9F80010100",  # leading zero group in tag
        "9F8181818101",  # tag longer than 4 bytes
        "000100",  # padding byte as tag
        "FF0100",  # FF as tag
    ],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(TLVError):
        decode_all(bytes.fromhex(bad))


def test_errors_are_gp_errors() -> None:
    assert issubclass(TLVError, GPError)
    with pytest.raises(TLVError):
        encode_tlv(0x1F, b"")  # multi-byte form without subsequent byte
    with pytest.raises(TLVError):
        encode_tlv(0x9F01 | 0x80, b"")  # last byte with continuation bit
    with pytest.raises(TLVError):
        encode_tlv(0, b"")
    with pytest.raises(TLVError):
        encode_length(-1)


def _valid_tag() -> st.SearchStrategy[int]:
    single = st.integers(1, 0xFE).filter(lambda b: b & 0x1F != 0x1F)
    first = st.integers(0, 7).map(lambda c: (c << 5) | 0x1F)
    two = st.tuples(first, st.integers(1, 0x7F)).map(lambda t: (t[0] << 8) | t[1])
    three = st.tuples(first, st.integers(0x81, 0xFF), st.integers(0, 0x7F)).map(
        lambda t: (t[0] << 16) | (t[1] << 8) | t[2]
    )
    return st.one_of(single, two, three).filter(lambda t: (t >> ((t.bit_length() - 1) // 8 * 8)) != 0xFF)


@given(st.lists(st.tuples(_valid_tag(), st.binary(max_size=300)), max_size=5))
def test_round_trip(items: list[tuple[int, bytes]]) -> None:
    enc = b"".join(encode_tlv(t, v) for t, v in items)
    dec = decode_all(enc)
    assert [(d.tag, d.value) for d in dec] == items
    assert b"".join(d.encode() for d in dec) == enc


@given(st.binary(max_size=64))
def test_random_bytes_only_tlv_errors(data: bytes) -> None:
    try:
        for t in decode_all(data):
            if t.constructed:
                with contextlib.suppress(TLVError):
                    t.children()
    except TLVError:
        pass
