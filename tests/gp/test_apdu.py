"""ISO 7816-4 APDU encoding: round trips, strict parsing, status word helpers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gp.apdu import SW, CommandAPDU, ResponseAPDU, get_response_command, resend_with_le, sw_name
from gp.errors import APDUError, GPError

byte = st.integers(0, 255)


@st.composite
def command_apdus(draw: st.DrawFn) -> CommandAPDU:
    extended = draw(st.booleans())
    max_data = 65535 if extended else 255
    data = draw(st.binary(max_size=min(max_data, 600)))
    le = draw(st.none() | st.integers(1, 65536 if extended else 256))
    return CommandAPDU(draw(byte), draw(byte), draw(byte), draw(byte), data, le, extended)


@given(command_apdus())
def test_command_round_trip(capdu: CommandAPDU) -> None:
    raw = capdu.to_bytes()
    parsed = CommandAPDU.from_bytes(raw)
    assert parsed.to_bytes() == raw
    assert (parsed.cla, parsed.ins, parsed.p1, parsed.p2) == (capdu.cla, capdu.ins, capdu.p1, capdu.p2)
    assert parsed.data == capdu.data
    assert parsed.le == capdu.le
    assert parsed.is_extended == capdu.is_extended


@pytest.mark.parametrize(
    ("capdu", "hexstr"),
    [
        (CommandAPDU(0x80, 0xF2, 0x20, 0x02), "80F22002"),
        (CommandAPDU(0x80, 0xCA, 0x00, 0x66, le=256), "80CA006600"),
        (CommandAPDU(0x80, 0xCA, 0x00, 0x66, le=5), "80CA006605"),
        (CommandAPDU(0x80, 0xF2, 0x80, 0x02, b"\x4f\x00", le=256), "80F28002024F0000"),
        (CommandAPDU(0x80, 0xE6, 0x02, 0x00, b"\x01"), "80E6020001" + "01"),
        (CommandAPDU(0x00, 0xB0, 0, 0, le=65536), "00B00000000000"),
        (CommandAPDU(0x00, 0xB0, 0, 0, le=257), "00B00000000101"),
        (CommandAPDU(0x00, 0xB0, 0, 0, le=256, extended=True), "00B00000000100"),
        (CommandAPDU(0x00, 0xD6, 0, 0, b"\xaa", extended=True), "00D6000000" + "0001AA"),
        (CommandAPDU(0x00, 0xD6, 0, 0, b"\xaa", le=65536), "00D60000000001AA0000"),
        (CommandAPDU(0x80, 0xE8, 0, 0, bytes(256)), "80E80000" + "000100" + "00" * 256),
    ],
)
def test_known_encodings(capdu: CommandAPDU, hexstr: str) -> None:
    assert capdu.to_bytes().hex().upper() == hexstr.upper()
    assert CommandAPDU.from_bytes(bytes.fromhex(hexstr)) == capdu


@pytest.mark.parametrize(
    "hexstr",
    [
        "",
        "80",
        "80F220",
        "80F2200203AABB",  # Lc 3, only 2 bytes
        "80F2200201AABBCC",  # Lc 1, 3 bytes follow
        "80F220020000",  # extended marker with only 1 more byte
        "80F22002000000",  # 2E Le=65536 is fine... so check that 3E Lc=0 with data fails below
        "80F2200200000001",  # extended Lc=0 with a byte
        "80F2200200000201",  # extended Lc=2 truncated
        "80F220020000020102030405",  # extended Lc=2 too many bytes
    ],
)
def test_malformed_commands(hexstr: str) -> None:
    raw = bytes.fromhex(hexstr)
    if hexstr == "80F22002000000":
        assert CommandAPDU.from_bytes(raw).le == 65536
        return
    with pytest.raises(APDUError):
        CommandAPDU.from_bytes(raw)


def test_invalid_fields() -> None:
    with pytest.raises(APDUError):
        CommandAPDU(0x100, 0, 0, 0)
    with pytest.raises(APDUError):
        CommandAPDU(0, 0, 0, 0, le=0)
    with pytest.raises(APDUError):
        CommandAPDU(0, 0, 0, 0, le=65537)
    with pytest.raises(APDUError):
        CommandAPDU(0, 0, 0, 0, bytes(65536))
    with pytest.raises(GPError):
        ResponseAPDU.from_bytes(b"\x90")
    assert not issubclass(APDUError, ValueError)


def test_auto_extended() -> None:
    assert CommandAPDU(0, 0, 0, 0, bytes(255)).is_extended is False
    assert CommandAPDU(0, 0, 0, 0, bytes(256)).is_extended is True
    assert CommandAPDU(0, 0, 0, 0, le=256).is_extended is False
    assert CommandAPDU(0, 0, 0, 0, le=257).is_extended is True


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_response_round_trip(data: bytes, sw: int) -> None:
    r = ResponseAPDU(data, sw)
    raw = r.to_bytes()
    assert ResponseAPDU.from_bytes(raw) == r
    assert r.sw1 == sw >> 8 and r.sw2 == sw & 0xFF
    assert r.ok == (sw == 0x9000)


@given(st.binary(max_size=20))
def test_from_bytes_never_raises_other_errors(raw: bytes) -> None:
    with contextlib.suppress(APDUError):
        CommandAPDU.from_bytes(raw)


def test_sw_names() -> None:
    assert sw_name(0x9000) == "9000 success"
    assert "not found" in sw_name(SW.FILE_NOT_FOUND)
    assert "16 more" in sw_name(0x6110)
    assert "256 more" in sw_name(0x6100)
    assert "exact length is 32" in sw_name(0x6C20)
    assert "3 retries" in sw_name(0x63C3)
    assert sw_name(0x6A88).startswith("6A88 ")
    assert "unknown" in sw_name(0x1234)
    for sw in SW:
        assert sw_name(sw).startswith(f"{int(sw):04X} ")
    for value in (
        0x9000,
        0x6310,
        0x6283,
        0x6982,
        0x6985,
        0x6A80,
        0x6A82,
        0x6A84,
        0x6A86,
        0x6A88,
        0x6D00,
        0x6E00,
        0x6700,
        0x6983,
        0x6A81,
        0x6581,
        0x6400,
        0x6B00,
    ):
        assert value in SW.__members__.values()


def test_get_response_and_resend() -> None:
    assert get_response_command(0x9000) is None
    assert get_response_command(0x6110).to_bytes() == bytes.fromhex("00C0000010")
    assert get_response_command(0x6100).le == 256
    cmd = CommandAPDU(0x80, 0xCA, 0x00, 0x66, le=256)
    assert resend_with_le(cmd, 0x6A82) is None
    again = resend_with_le(cmd, 0x6C12)
    assert again is not None and again.to_bytes() == bytes.fromhex("80CA006612")
