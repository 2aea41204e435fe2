"""The card's validity as data objects of the Issuer Security Domain: ``5F25`` (effective date)
and ``5F24`` (expiration date), each ``YYMMDD`` in BCD, 3 bytes, as EMV codes them (EMV Book 3,
Annex A: Application Effective / Expiration Date). They are written with STORE DATA to the ISD in
BER-TLV format (GPC 2.3.1 §11.11.2.1: P1 b5-b4 = 10) and read back with GET DATA (§11.3).
"""

from __future__ import annotations

import datetime as dt

from gp.errors import EncodingError
from gp.tlv import decode_all, encode_tlv

TAG_EFFECTIVE_DATE = 0x5F25
TAG_EXPIRATION_DATE = 0x5F24
VALIDITY_TAGS = (TAG_EFFECTIVE_DATE, TAG_EXPIRATION_DATE)
_CENTURY = 2000  # YYMMDD: the platform's cards are all of this century


def encode_date(day: dt.date) -> bytes:
    """``YYMMDD`` in BCD (EMV n6): 2030-01-31 is ``30 01 31``."""
    if not _CENTURY <= day.year < _CENTURY + 100:
        raise EncodingError(f"{day.isoformat()} is outside the years YYMMDD can carry")
    return bytes.fromhex(f"{day.year % 100:02d}{day.month:02d}{day.day:02d}")


def decode_date(value: bytes) -> dt.date:
    """The date of a 3-byte BCD ``YYMMDD``; EncodingError for anything else (wrong length, a
    nibble above 9, no such day)."""
    text = bytes(value).hex()
    if len(value) != 3 or not text.isdigit():
        raise EncodingError(f"not a YYMMDD BCD date: {text.upper()}")
    try:
        return dt.date(_CENTURY + int(text[0:2]), int(text[2:4]), int(text[4:6]))
    except ValueError:
        raise EncodingError(f"no such day: {text}") from None


def validity_objects(valid_from: dt.date, valid_until: dt.date) -> bytes:
    """``5F25 03 <effective> 5F24 03 <expiration>``: the STORE DATA block of a renewal."""
    if valid_until < valid_from:
        raise EncodingError("the card would expire before it becomes valid")
    return encode_tlv(TAG_EFFECTIVE_DATE, encode_date(valid_from)) + encode_tlv(
        TAG_EXPIRATION_DATE, encode_date(valid_until)
    )


def parse_date_object(data: bytes, tag: int) -> dt.date:
    """GET DATA's answer ``<tag> 03 YYMMDD`` as a date (EncodingError if it is anything else)."""
    objects = decode_all(data)
    if len(objects) != 1 or objects[0].tag != tag:
        raise EncodingError(f"expected one {tag:X} data object")
    return decode_date(objects[0].value)
