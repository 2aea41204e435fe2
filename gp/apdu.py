"""ISO/IEC 7816-4 command and response APDUs (sans-I/O).

Encoding rules follow ISO/IEC 7816-4:2020 §5.1 (command-response pairs):

* case 1   ``CLA INS P1 P2``
* case 2S  ``... Le``                      (Le 1 byte, ``00`` means 256)
* case 3S  ``... Lc data``                 (Lc 1 byte, 1..255)
* case 4S  ``... Lc data Le``
* case 2E  ``... 00 Le1 Le2``              (``0000`` means 65536)
* case 3E  ``... 00 Lc1 Lc2 data``         (Lc 1..65535)
* case 4E  ``... 00 Lc1 Lc2 data Le1 Le2``  (no second ``00`` before Le)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from gp.errors import APDUError

__all__ = [
    "SW",
    "CommandAPDU",
    "ResponseAPDU",
    "get_response_command",
    "resend_with_le",
    "sw_name",
]

_SHORT_MAX_LC = 255
_SHORT_MAX_LE = 256
_EXT_MAX_LC = 65535
_EXT_MAX_LE = 65536


@dataclass(frozen=True)
class CommandAPDU:
    """A command APDU. ``le=None`` means no Le field; ``extended`` forces extended length."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None
    extended: bool = False

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise APDUError(f"{name.upper()} must be a byte (0..255), got {value!r}")
        if not isinstance(self.data, bytes):
            if isinstance(self.data, bytearray | memoryview):
                object.__setattr__(self, "data", bytes(self.data))
            else:
                raise APDUError(f"data must be bytes, got {type(self.data).__name__}")
        if len(self.data) > _EXT_MAX_LC:
            raise APDUError(f"command data too long: {len(self.data)} > {_EXT_MAX_LC} bytes")
        if self.le is not None and (not isinstance(self.le, int) or not 1 <= self.le <= _EXT_MAX_LE):
            raise APDUError(f"Le must be None or 1..{_EXT_MAX_LE} (256 encodes as short 00), got {self.le!r}")

    @property
    def is_extended(self) -> bool:
        """True when :meth:`to_bytes` uses extended-length encoding."""
        if not self.data and self.le is None:
            return False  # case 1 has no length fields
        return self.extended or len(self.data) > _SHORT_MAX_LC or (self.le is not None and self.le > _SHORT_MAX_LE)

    @property
    def case(self) -> int:
        """ISO 7816-4 case number 1..4 (without the S/E suffix)."""
        if self.data:
            return 4 if self.le is not None else 3
        return 2 if self.le is not None else 1

    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))

    def to_bytes(self) -> bytes:
        out = bytearray((self.cla, self.ins, self.p1, self.p2))
        if self.is_extended:
            # ISO 7816-4 §5.1: extended Lc is 00 || 2 bytes; extended Le is 2 bytes,
            # preceded by 00 only when there is no Lc field (case 2E).
            if self.data:
                out.append(0)
                out += len(self.data).to_bytes(2, "big")
                out += self.data
                if self.le is not None:
                    out += (self.le & 0xFFFF).to_bytes(2, "big")
            elif self.le is not None:
                out.append(0)
                out += (self.le & 0xFFFF).to_bytes(2, "big")
        else:
            if self.data:
                out.append(len(self.data))
                out += self.data
            if self.le is not None:
                out.append(self.le & 0xFF)
        return bytes(out)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CommandAPDU:
        """Parse one command APDU strictly (cases 1, 2S, 3S, 4S, 2E, 3E, 4E).

        ``extended`` is set only when the APDU used extended encoding although the
        short form would have sufficed, so ``from_bytes(x).to_bytes() == x``.
        """
        capdu = cls._parse(bytes(raw))
        if capdu.extended and (len(capdu.data) > _SHORT_MAX_LC or (capdu.le or 0) > _SHORT_MAX_LE):
            capdu = replace(capdu, extended=False)
        return capdu

    @classmethod
    def _parse(cls, raw: bytes) -> CommandAPDU:
        n = len(raw)
        if n < 4:
            raise APDUError(f"command APDU too short: {n} bytes (a header is 4)")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        if n == 4:  # case 1
            return cls(cla, ins, p1, p2)
        if n == 5:  # case 2S
            return cls(cla, ins, p1, p2, le=raw[4] or _SHORT_MAX_LE)
        if raw[4] != 0:  # short Lc
            lc = raw[4]
            if n == 5 + lc:  # case 3S
                return cls(cla, ins, p1, p2, raw[5:])
            if n == 6 + lc:  # case 4S
                return cls(cla, ins, p1, p2, raw[5:-1], le=raw[-1] or _SHORT_MAX_LE)
            raise APDUError(f"short Lc={lc} does not match APDU body of {n - 5} bytes")
        # raw[4] == 00 with more bytes: extended length
        if n == 7:  # case 2E
            return cls(cla, ins, p1, p2, le=int.from_bytes(raw[5:7], "big") or _EXT_MAX_LE, extended=True)
        if n < 7:
            raise APDUError(f"truncated extended-length APDU ({n} bytes)")
        lc = int.from_bytes(raw[5:7], "big")
        if lc == 0:
            raise APDUError("extended Lc of 0000 is not allowed")
        if n == 7 + lc:  # case 3E
            return cls(cla, ins, p1, p2, raw[7:], extended=True)
        if n == 9 + lc:  # case 4E
            le = int.from_bytes(raw[-2:], "big") or _EXT_MAX_LE
            return cls(cla, ins, p1, p2, raw[7:-2], le=le, extended=True)
        raise APDUError(f"extended Lc={lc} does not match APDU body of {n - 7} bytes")

    def __repr__(self) -> str:
        le = "" if self.le is None else f", le={self.le}"
        ext = ", extended=True" if self.extended else ""
        return (
            f"CommandAPDU({self.cla:02X} {self.ins:02X} {self.p1:02X} {self.p2:02X}, "
            f"data={self.data.hex().upper() or '-'}{le}{ext})"
        )


@dataclass(frozen=True)
class ResponseAPDU:
    """A response APDU: data followed by the two status bytes."""

    data: bytes
    sw: int

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            if isinstance(self.data, bytearray | memoryview):
                object.__setattr__(self, "data", bytes(self.data))
            else:
                raise APDUError(f"data must be bytes, got {type(self.data).__name__}")
        if not isinstance(self.sw, int) or not 0 <= self.sw <= 0xFFFF:
            raise APDUError(f"status word must be 0..FFFF, got {self.sw!r}")

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    @property
    def ok(self) -> bool:
        return self.sw == 0x9000

    @classmethod
    def from_bytes(cls, raw: bytes) -> ResponseAPDU:
        raw = bytes(raw)
        if len(raw) < 2:
            raise APDUError(f"response APDU too short: {len(raw)} bytes (SW1 SW2 are mandatory)")
        return cls(raw[:-2], int.from_bytes(raw[-2:], "big"))

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __repr__(self) -> str:
        return f"ResponseAPDU(data={self.data.hex().upper() or '-'}, sw={self.sw:04X})"


class SW(IntEnum):
    """Common ISO 7816-4 and GlobalPlatform status words."""

    SUCCESS = 0x9000
    WARNING_NO_INFO = 0x6200
    WARNING_END_OF_DATA = 0x6282
    WARNING_SELECTED_FILE_INVALIDATED = 0x6283  # GP: card life cycle is CARD_LOCKED
    WARNING_MORE_DATA = 0x6310  # GP GET STATUS: more data available
    WARNING_NV_CHANGED = 0x6300
    AUTHENTICATION_FAILED = 0x6300  # the same SW from EXTERNAL AUTHENTICATE (GP 2.3.1 §11.8.3.2)
    EXECUTION_ERROR = 0x6400
    MEMORY_FAILURE = 0x6581
    # SCP11 (GPC Amd F, error conditions of PERFORM SECURITY OPERATION / MUTUAL AUTHENTICATE)
    CERTIFICATE_VERIFICATION_FAILED = 0x6600
    CERTIFICATE_NOT_WHITELISTED = 0x6640
    WRONG_LENGTH = 0x6700
    CLA_FUNCTION_NOT_SUPPORTED = 0x6800
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    COMMAND_NOT_ALLOWED = 0x6900
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTHENTICATION_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_INVALIDATED = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED_NO_EF = 0x6986
    SM_DATA_OBJECTS_MISSING = 0x6987
    SM_DATA_OBJECTS_INCORRECT = 0x6988
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    LC_INCONSISTENT_WITH_P1P2 = 0x6A87
    REFERENCED_DATA_NOT_FOUND = 0x6A88
    FILE_ALREADY_EXISTS = 0x6A89
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00


_SW_TEXT: dict[int, str] = {
    0x9000: "success",
    0x6200: "warning: no information given (state of non-volatile memory unchanged)",
    0x6281: "warning: part of returned data may be corrupted",
    0x6282: "warning: end of file/record reached before reading Le bytes",
    0x6283: "warning: selected file invalidated (card locked)",
    0x6300: "warning: state changed / authentication of host cryptogram failed",
    0x6310: "warning: more data available",
    0x6400: "execution error: no precise diagnosis",
    0x6581: "memory failure",
    0x6600: "verification of the certificate failed",
    0x6640: "certificate not in whitelist",
    0x6700: "wrong length",
    0x6800: "function in CLA not supported",
    0x6881: "logical channel not supported or not open",
    0x6882: "secure messaging not supported",
    0x6900: "command not allowed",
    0x6982: "security status not satisfied",
    0x6983: "authentication method blocked",
    0x6984: "referenced data invalidated",
    0x6985: "conditions of use not satisfied",
    0x6986: "command not allowed (no current EF)",
    0x6987: "expected secure messaging data objects missing",
    0x6988: "incorrect secure messaging data objects",
    0x6A80: "incorrect values in command data",
    0x6A81: "function not supported",
    0x6A82: "file or application not found",
    0x6A83: "record not found",
    0x6A84: "not enough memory space",
    0x6A86: "incorrect P1 P2",
    0x6A87: "Lc inconsistent with P1 P2",
    0x6A88: "referenced data not found",
    0x6A89: "file already exists",
    0x6B00: "wrong parameters P1 P2",
    0x6D00: "instruction not supported or invalid",
    0x6E00: "class not supported",
    0x6F00: "no precise diagnosis",
}


def sw_name(sw: int) -> str:
    """A readable description such as ``"6A82 file or application not found"``."""
    sw &= 0xFFFF
    sw1, sw2 = sw >> 8, sw & 0xFF
    if sw in _SW_TEXT:
        text = _SW_TEXT[sw]
    elif sw1 == 0x61:
        text = f"{sw2 or 256} more response bytes available (GET RESPONSE)"
    elif sw1 == 0x6C:
        text = f"wrong Le: exact length is {sw2 or 256}"
    elif sw1 == 0x63 and sw2 & 0xF0 == 0xC0:
        text = f"verification failed: {sw2 & 0x0F} retries left"
    elif sw1 == 0x62:
        text = "warning: state of non-volatile memory unchanged"
    elif sw1 == 0x63:
        text = "warning: state of non-volatile memory changed"
    elif sw1 == 0x64:
        text = "execution error: state of non-volatile memory unchanged"
    elif sw1 == 0x65:
        text = "execution error: state of non-volatile memory changed"
    elif sw1 == 0x66:
        text = "security-related issue"
    elif sw1 in (0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6D, 0x6E, 0x6F):
        text = "checking error"
    else:
        text = "unknown status word"
    return f"{sw:04X} {text}"


def get_response_command(sw: int) -> CommandAPDU | None:
    """For ``61xx``: the GET RESPONSE command fetching SW2 bytes (ISO 7816-4 §11.4.5); else None."""
    if sw >> 8 != 0x61:
        return None
    return CommandAPDU(0x00, 0xC0, 0x00, 0x00, le=(sw & 0xFF) or 256)


def resend_with_le(capdu: CommandAPDU, sw: int) -> CommandAPDU | None:
    """For ``6Cxx``: the same command with Le = SW2 (ISO 7816-3 §12.2.2); else None."""
    if sw >> 8 != 0x6C:
        return None
    return replace(capdu, le=(sw & 0xFF) or 256)
