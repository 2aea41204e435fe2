"""The SCP11 key agreement shared by host and card (Amd F §6.5), bytes in, bytes out.

Both ends build the same :class:`AuthenticateRequest` (the data field of MUTUAL AUTHENTICATE or
INTERNAL AUTHENTICATE) and run :func:`agree` with the secrets they hold, so the emulated card and
the host cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from gp.errors import EncodingError, TLVError
from gp.scp11.constants import PARAMETER_HOST_ID, SCP11_ID, KeyType, KeyUsageQualifier, SCP11Variant, Tag
from gp.scp11.crypto import (
    Curve,
    SessionKeys,
    compute_receipt,
    derive_session_keys,
    ecka,
    encode_point,
    public_key,
)
from gp.tlv import decode_all, decode_one, encode_tlv

__all__ = [
    "SESSION_KEY_LENGTHS",
    "AuthenticateRequest",
    "AuthenticateResponse",
    "KeyAgreement",
    "agree",
    "card_shared_secrets",
    "host_shared_secrets",
    "sd_response_point",
]

SESSION_KEY_LENGTHS = frozenset({16, 24, 32})  # AES-128/192/256 (Amd F §6.5.2, key length tag 81)


@dataclass(frozen=True)
class AuthenticateRequest:
    """Data field of MUTUAL / INTERNAL AUTHENTICATE (Amd F §7.6.2 Table 7-13, §7.7.2):
    ``A6 { 90 {11, i}  95 {key usage}  80 {key type}  81 {key length} }  5F49 {ePK.OCE.ECKA}``."""

    variant: SCP11Variant
    key_usage: KeyUsageQualifier
    key_length: int
    ephemeral_point: bytes

    def control_reference_template(self) -> bytes:
        return encode_tlv(
            Tag.CONTROL_REFERENCE_TEMPLATE,
            encode_tlv(Tag.SCP_IDENTIFIER, bytes((SCP11_ID, self.variant.parameter)))
            + encode_tlv(Tag.KEY_USAGE, bytes((self.key_usage,)))
            + encode_tlv(Tag.KEY_TYPE, bytes((KeyType.AES,)))
            + encode_tlv(Tag.KEY_LENGTH, bytes((self.key_length,))),
        )

    def encode(self) -> bytes:
        return self.control_reference_template() + encode_tlv(Tag.EPHEMERAL_PUBLIC_KEY, self.ephemeral_point)

    @property
    def shared_info(self) -> bytes:
        """SharedInfo of the KDF (Amd F §6.5.2): key usage || key type || key length."""
        return bytes((self.key_usage, KeyType.AES, self.key_length))

    @classmethod
    def parse(cls, data: bytes) -> AuthenticateRequest:
        """Strict parse (the card side); :class:`EncodingError` on anything else than Table 7-13."""
        try:
            objects = decode_all(bytes(data))
            if [o.tag for o in objects] != [Tag.CONTROL_REFERENCE_TEMPLATE, Tag.EPHEMERAL_PUBLIC_KEY]:
                raise EncodingError("expected A6 then 5F49")
            crt = {o.tag: o.value for o in decode_all(objects[0].value)}
            if len(crt) != len(decode_all(objects[0].value)):
                raise EncodingError("repeated tag in the key agreement CRT")
        except TLVError as exc:
            raise EncodingError(f"malformed authenticate data: {exc}") from None
        if set(crt) != {Tag.SCP_IDENTIFIER, Tag.KEY_USAGE, Tag.KEY_TYPE, Tag.KEY_LENGTH}:
            # tag 84 (HostID) only comes with parameter bit b3, which is not supported here
            raise EncodingError("key agreement CRT needs exactly 90, 95, 80 and 81")
        scp = crt[Tag.SCP_IDENTIFIER]
        if len(scp) != 2 or scp[0] != SCP11_ID or scp[1] & ~0x03:
            if len(scp) == 2 and scp[1] & PARAMETER_HOST_ID:
                raise EncodingError("HostID / card identifiers in the key derivation are not supported")
            raise EncodingError("SCP identifier (90) is not SCP11 with known parameters")
        usage, key_type, length = crt[Tag.KEY_USAGE], crt[Tag.KEY_TYPE], crt[Tag.KEY_LENGTH]
        if len(usage) != 1 or usage[0] not in {q.value for q in KeyUsageQualifier}:
            raise EncodingError(f"key usage qualifier {usage.hex().upper()} not supported")
        if key_type != bytes((KeyType.AES,)):
            raise EncodingError(f"key type {key_type.hex().upper()} is not AES (88)")
        if len(length) != 1 or length[0] not in SESSION_KEY_LENGTHS:
            raise EncodingError(f"session key length {length.hex().upper()} not supported")
        return cls(SCP11Variant.from_parameter(scp[1]), KeyUsageQualifier(usage[0]), length[0], objects[1].value)


@dataclass(frozen=True)
class AuthenticateResponse:
    """Response data (Amd F §7.6.3 Table 7-15): ``5F49 {ePK.SD.ECKA}  86 {receipt}``; for SCP11c
    the card has no ephemeral key and 5F49 carries PK.SD.ECKA."""

    sd_point: bytes
    receipt: bytes

    def point_object(self) -> bytes:
        return encode_tlv(Tag.EPHEMERAL_PUBLIC_KEY, self.sd_point)

    def encode(self) -> bytes:
        return self.point_object() + encode_tlv(Tag.RECEIPT, self.receipt)

    @classmethod
    def parse(cls, data: bytes) -> AuthenticateResponse:
        data = bytes(data)
        try:
            point, offset = decode_one(data)
            receipt, end = decode_one(data, offset)
        except TLVError as exc:
            raise EncodingError(f"malformed authenticate response: {exc}") from None
        if point.tag != Tag.EPHEMERAL_PUBLIC_KEY or receipt.tag != Tag.RECEIPT or end != len(data):
            raise EncodingError("authenticate response is not 5F49 then 86")
        if len(receipt.value) != 16:
            raise EncodingError(f"receipt of {len(receipt.value)} bytes; 16 expected")
        return cls(point.value, receipt.value)


@dataclass(frozen=True, repr=False)
class KeyAgreement:
    """What the key agreement yields: the session keys and the receipt (which is also the first
    MAC chaining value of the secure messaging, Amd F §6.6)."""

    keys: SessionKeys
    receipt: bytes

    def __repr__(self) -> str:
        return f"KeyAgreement({self.keys!r})"


def agree(curve: Curve, request: AuthenticateRequest, response_point: bytes, shared_secrets: bytes) -> KeyAgreement:
    """Derive the session keys from ``shared_secrets`` (ShS1 || ShS2 in the variant's order) and
    compute the receipt over the request as sent and the card's 5F49 object (Amd F §6.5.3)."""
    keys = derive_session_keys(curve, shared_secrets, request.shared_info, request.key_length)
    key_agreement_data = request.encode() + encode_tlv(Tag.EPHEMERAL_PUBLIC_KEY, response_point)
    return KeyAgreement(keys, compute_receipt(keys.receipt_key, key_agreement_data))


def host_shared_secrets(
    variant: SCP11Variant,
    curve: Curve,
    ephemeral: ec.EllipticCurvePrivateKey,
    oce_static: ec.EllipticCurvePrivateKey | None,
    sd_static_point: bytes,
    response_point: bytes,
) -> bytes:
    """The OCE's side (Amd F §3.1 / §6.5.1):

    * SCP11a: ShSee = eSK.OCE x ePK.SD, ShSss = SK.OCE x PK.SD
    * SCP11b: ShSee = eSK.OCE x ePK.SD, ShSes = eSK.OCE x PK.SD
    * SCP11c: ShSes = eSK.OCE x PK.SD,  ShSss = SK.OCE x PK.SD (no card ephemeral key: the card
      answers PK.SD.ECKA, so the session depends on the OCE's randomness only)
    """
    sd_static = public_key(curve, sd_static_point)
    if variant is SCP11Variant.C:
        if oce_static is None:
            raise EncodingError("SCP11c needs SK.OCE.ECKA")
        return ecka(ephemeral, sd_static) + ecka(oce_static, sd_static)
    sd_ephemeral = public_key(curve, response_point)
    first = ecka(ephemeral, sd_ephemeral)
    if variant is SCP11Variant.A:
        if oce_static is None:
            raise EncodingError("SCP11a needs SK.OCE.ECKA")
        return first + ecka(oce_static, sd_static)
    return first + ecka(ephemeral, sd_static)


def card_shared_secrets(
    variant: SCP11Variant,
    sd_static: ec.EllipticCurvePrivateKey,
    sd_ephemeral: ec.EllipticCurvePrivateKey | None,
    oce_ephemeral_point: bytes,
    oce_static_point: bytes | None,
) -> bytes:
    """The card's side of the same secrets (ECDH is symmetric)."""
    curve = Curve.of_key(sd_static)
    oce_ephemeral = public_key(curve, oce_ephemeral_point)
    if variant is SCP11Variant.C:
        if oce_static_point is None:
            raise EncodingError("SCP11c needs PK.OCE.ECKA")
        return ecka(sd_static, oce_ephemeral) + ecka(sd_static, public_key(curve, oce_static_point))
    if sd_ephemeral is None:
        raise EncodingError(f"{variant.label} needs the card's ephemeral key")
    if variant is SCP11Variant.B:
        return ecka(sd_ephemeral, oce_ephemeral) + ecka(sd_static, oce_ephemeral)
    if oce_static_point is None:
        raise EncodingError("SCP11a needs PK.OCE.ECKA")
    return ecka(sd_ephemeral, oce_ephemeral) + ecka(sd_static, public_key(curve, oce_static_point))


def sd_response_point(
    variant: SCP11Variant, sd_static: ec.EllipticCurvePrivateKey, sd_ephemeral: ec.EllipticCurvePrivateKey | None
) -> bytes:
    """The point the card answers in 5F49: ePK.SD.ECKA, or PK.SD.ECKA for SCP11c."""
    if variant is SCP11Variant.C or sd_ephemeral is None:
        return encode_point(sd_static.public_key())
    return encode_point(sd_ephemeral.public_key())
