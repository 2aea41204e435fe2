"""Field encoders the command builders share. A builder argument the encoding cannot carry is the
caller's mistake: :class:`gp.errors.InvalidCommandError` (local)."""

from __future__ import annotations

from gp.apdu import CommandAPDU
from gp.errors import APDUError, InvalidCommandError
from gp.tlv import encode_length


def _apdu(
    cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None, extended: bool = False
) -> bytes:
    try:
        return CommandAPDU(cla, ins, p1, p2, bytes(data), le, extended).to_bytes()
    except InvalidCommandError:
        raise
    except (APDUError, TypeError, ValueError) as exc:  # the builder's caller passed a bad value
        raise InvalidCommandError(str(exc)) from exc


def _check_aid(aid: bytes, what: str = "AID", allow_empty: bool = False) -> bytes:
    aid = bytes(aid)
    if allow_empty and not aid:
        return aid
    if not 5 <= len(aid) <= 16:  # ISO/IEC 7816-5: AIDs are 5..16 bytes
        raise InvalidCommandError(f"{what} must be 5..16 bytes, got {len(aid)}")
    return aid


def _lv(value: bytes, what: str) -> bytes:
    """One-byte length + value (AID, hash and privileges fields of INSTALL, §11.5.2.3)."""
    value = bytes(value)
    if len(value) > 255:
        raise InvalidCommandError(f"{what} too long: {len(value)} bytes")
    return bytes([len(value)]) + value


def _lv_ber(value: bytes) -> bytes:
    """BER length (1-3 bytes) + value, for parameter and token fields (§11.5.2.3: length 1-3)."""
    value = bytes(value)
    return encode_length(len(value)) + value
