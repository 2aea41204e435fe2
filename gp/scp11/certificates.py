"""Certificates of SCP11: the GP format (tag 7F21) and X.509, and chain verification.

GP format, Amd F §6.2 (Table 6-1 in v1.4; Table 6-12 in v1.2.1), in this order:
``93`` serial number, ``42`` CA-KLOC identifier (the issuing CA), ``5F20`` subject identifier,
``95`` key usage, ``5F25`` effective date (optional), ``5F24`` expiration date, ``53`` or ``73``
discretionary data (optional, not both), ``BF20`` authorisations (optional), ``7F49`` public key
(``B0`` point, ``F0`` key parameter reference), and last ``5F37`` the signature, which covers every
byte of the body before it as it arrived (so signed bytes are kept, never re-encoded).
Dates are YYYYMMDD in BCD (4 bytes). Key usage (GPC 2.3.1 §11.1.9 Tables 11-17/11-18): ``82``
signature verification (a CA or a KLOC certificate), ``00 80`` key agreement (CERT.OCE.ECKA,
CERT.SD.ECKA); one byte means the second byte is ``00``.

X.509 (Amd F v1.4 §6.2 allows X.509 certificates in the OCE chain and the SD store, which yubikit
and the YubiKey use): the issuer is matched through the Authority/Subject Key Identifiers, the
key usage through the KeyUsage extension (keyCertSign or digitalSignature for a CA, keyAgreement
for the leaf), the validity through notBefore/notAfter (compared as dates).

Checking never reads a clock: the caller passes ``today``.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning

from gp.errors import GPError, TLVError
from gp.scp11.constants import Tag
from gp.scp11.crypto import Curve, ecdsa_verify, encode_point, public_key
from gp.scp11.errors import (
    CertificateEncodingError,
    CertificateError,
    CertificateExpiredError,
    CertificateKeyUsageError,
    CertificateSignatureError,
    InvalidPointError,
    UnknownTrustAnchorError,
)
from gp.tlv import decode_length, decode_one, encode_tlv

__all__ = [
    "MAX_CHAIN_LENGTH",
    "Certificate",
    "GPCertificate",
    "KeyUsage",
    "TrustAnchor",
    "UnsupportedAuthorizationsError",
    "X509Certificate",
    "parse_certificate",
    "parse_certificates",
    "verify_chain",
]

MAX_CHAIN_LENGTH = 8  # bound on the work a hostile chain can cause; real chains have 1-3


class UnsupportedAuthorizationsError(CertificateError):
    """A certificate carries BF20 authorisation rules (Amd F Annex B), which are not enforced
    here; accepting it would grant less than the issuer meant, so it is refused ('6A81')."""


class KeyUsage(IntEnum):
    """Two-byte key usage of tag 95 (GPC 2.3.1 §11.1.9): first byte in the high half."""

    SIGNATURE_VERIFICATION = 0x8200  # b8 verification + b2 digital signature (Table 11-17)
    KEY_AGREEMENT = 0x0080  # second byte b8 key agreement (Table 11-18)

    def encode(self) -> bytes:
        return bytes((self >> 8,)) if self & 0xFF == 0 else self.to_bytes(2, "big")


def _decode_key_usage(value: bytes) -> int:
    if len(value) not in (1, 2):
        raise CertificateEncodingError(f"key usage (95) of {len(value)} bytes; 1 or 2 expected")
    return (value[0] << 8) | (value[1] if len(value) == 2 else 0)


def _decode_date(value: bytes, tag: Tag) -> dt.date:
    text = value.hex()
    if len(value) != 4 or not text.isdigit():
        raise CertificateEncodingError(f"{tag.name} is not a 4-byte BCD YYYYMMDD date")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise CertificateEncodingError(f"{tag.name} {text} is not a calendar date") from None


def _encode_date(day: dt.date) -> bytes:
    return bytes.fromhex(f"{day.year:04d}{day.month:02d}{day.day:02d}")


def _fields(body: bytes) -> list[tuple[int, int, int, int]]:
    """(tag, start of the object, start of the value, end) of each object of ``body``, without
    descending: B0 has the constructed bit but holds a point."""
    out: list[tuple[int, int, int, int]] = []
    offset = 0
    while offset < len(body):
        try:
            obj, end = decode_one(body, offset)
        except TLVError as exc:
            raise CertificateEncodingError(f"malformed certificate field: {exc}") from None
        out.append((obj.tag, offset, end - len(obj.value), end))
        offset = end
    return out


_GP_ORDER = (
    Tag.SERIAL_NUMBER,
    Tag.CA_KLOC_IDENTIFIER,
    Tag.SUBJECT_IDENTIFIER,
    Tag.KEY_USAGE,
    Tag.EFFECTIVE_DATE,
    Tag.EXPIRATION_DATE,
    Tag.DISCRETIONARY_DATA,
    Tag.DISCRETIONARY_DATA_TLV,
    Tag.AUTHORIZATIONS,
    Tag.PUBLIC_KEY,
    Tag.SIGNATURE,
)
_GP_MANDATORY = (
    Tag.SERIAL_NUMBER,
    Tag.CA_KLOC_IDENTIFIER,
    Tag.SUBJECT_IDENTIFIER,
    Tag.KEY_USAGE,
    Tag.EXPIRATION_DATE,
    Tag.PUBLIC_KEY,
    Tag.SIGNATURE,
)


@dataclass(frozen=True)
class GPCertificate:
    """A GP certificate (tag 7F21, Amd F §6.2). Build with :mod:`gp.scp11.ca`, read with :meth:`parse`."""

    serial_number: bytes
    ca_identifier: bytes
    subject_identifier: bytes
    key_usage: int
    expiration_date: dt.date
    curve: Curve
    public_key_point: bytes
    signature: bytes
    signed_data: bytes = field(repr=False)
    effective_date: dt.date | None = None
    discretionary_data: bytes | None = None
    authorizations: bytes | None = None

    # --- the common certificate interface ------------------------------

    @property
    def issuer_id(self) -> bytes:
        return self.ca_identifier

    @property
    def subject_id(self) -> bytes:
        return self.subject_identifier

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return public_key(self.curve, self.public_key_point)

    def allows(self, usage: KeyUsage) -> bool:
        return self.key_usage & usage == usage

    def valid_on(self, today: dt.date) -> bool:
        return (self.effective_date is None or self.effective_date <= today) and today <= self.expiration_date

    def signed_by(self, issuer: ec.EllipticCurvePublicKey) -> bool:
        return ecdsa_verify(issuer, self.signed_data, self.signature)

    def encode(self) -> bytes:
        return encode_tlv(Tag.CERTIFICATE, self.signed_data + encode_tlv(Tag.SIGNATURE, self.signature))

    # --- parsing and building ------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> GPCertificate:
        """One 7F21 object, nothing after it. :class:`CertificateEncodingError` (or
        :class:`InvalidPointError` for a bad point) on anything malformed."""
        data = bytes(data)
        try:
            obj, end = decode_one(data)
        except TLVError as exc:
            raise CertificateEncodingError(f"not a certificate: {exc}") from None
        if obj.tag != Tag.CERTIFICATE:
            raise CertificateEncodingError(f"tag {obj.tag:X} is not a GP certificate (7F21)")
        if end != len(data):
            raise CertificateEncodingError("bytes after the certificate")
        return cls._from_body(obj.value)

    @classmethod
    def _from_body(cls, body: bytes) -> GPCertificate:
        values: dict[int, bytes] = {}
        signature_start = -1
        last_rank = -1
        for tag, start, value_start, end in _fields(body):
            if tag in values:
                raise CertificateEncodingError(f"tag {tag:X} appears twice")
            if tag not in _GP_ORDER:
                raise CertificateEncodingError(f"tag {tag:X} has no place in a GP certificate")
            rank = _GP_ORDER.index(Tag(tag))
            if rank <= last_rank:
                raise CertificateEncodingError(f"tag {tag:X} out of the order of Amd F Table 6-1")
            last_rank = rank
            values[tag] = body[value_start:end]
            if tag == Tag.SIGNATURE:
                signature_start = start
                if end != len(body):
                    raise CertificateEncodingError("fields after the signature (5F37 must be last)")
        for tag in _GP_MANDATORY:
            if tag not in values:
                raise CertificateEncodingError(f"mandatory tag {tag:X} ({Tag(tag).name}) missing")
        if Tag.DISCRETIONARY_DATA in values and Tag.DISCRETIONARY_DATA_TLV in values:
            raise CertificateEncodingError("both 53 and 73 discretionary data")
        curve, point = _decode_public_key(values[Tag.PUBLIC_KEY])
        effective = values.get(Tag.EFFECTIVE_DATE)
        return cls(
            serial_number=values[Tag.SERIAL_NUMBER],
            ca_identifier=values[Tag.CA_KLOC_IDENTIFIER],
            subject_identifier=values[Tag.SUBJECT_IDENTIFIER],
            key_usage=_decode_key_usage(values[Tag.KEY_USAGE]),
            expiration_date=_decode_date(values[Tag.EXPIRATION_DATE], Tag.EXPIRATION_DATE),
            curve=curve,
            public_key_point=point,
            signature=values[Tag.SIGNATURE],
            signed_data=body[:signature_start],
            effective_date=None if effective is None else _decode_date(effective, Tag.EFFECTIVE_DATE),
            discretionary_data=values.get(Tag.DISCRETIONARY_DATA, values.get(Tag.DISCRETIONARY_DATA_TLV)),
            authorizations=values.get(Tag.AUTHORIZATIONS),
        )

    @staticmethod
    def to_be_signed(
        *,
        serial_number: bytes,
        ca_identifier: bytes,
        subject_identifier: bytes,
        key_usage: KeyUsage,
        expiration_date: dt.date,
        public_key: ec.EllipticCurvePublicKey,
        effective_date: dt.date | None = None,
        discretionary_data: bytes | None = None,
    ) -> bytes:
        """The body bytes the signature covers, in the order of Amd F Table 6-1."""
        curve = Curve.of_key(public_key)
        out = encode_tlv(Tag.SERIAL_NUMBER, serial_number) + encode_tlv(Tag.CA_KLOC_IDENTIFIER, ca_identifier)
        out += encode_tlv(Tag.SUBJECT_IDENTIFIER, subject_identifier) + encode_tlv(Tag.KEY_USAGE, key_usage.encode())
        if effective_date is not None:
            out += encode_tlv(Tag.EFFECTIVE_DATE, _encode_date(effective_date))
        out += encode_tlv(Tag.EXPIRATION_DATE, _encode_date(expiration_date))
        if discretionary_data is not None:
            out += encode_tlv(Tag.DISCRETIONARY_DATA, discretionary_data)
        key = encode_tlv(Tag.PUBLIC_KEY_Q, encode_point(public_key))
        key += encode_tlv(Tag.KEY_PARAMETER_REFERENCE, bytes((curve.value,)))
        return out + encode_tlv(Tag.PUBLIC_KEY, key)


def _decode_public_key(value: bytes) -> tuple[Curve, bytes]:
    """7F49 holding B0 (point) and F0 (key parameter reference, GPC 2.3.1 Table B-2)."""
    parts: dict[int, bytes] = {}
    for tag, _start, value_start, end in _fields(value):
        if tag in parts or tag not in (Tag.PUBLIC_KEY_Q, Tag.KEY_PARAMETER_REFERENCE):
            raise CertificateEncodingError(f"public key (7F49) has an unexpected or repeated tag {tag:X}")
        parts[tag] = value[value_start:end]
    if Tag.PUBLIC_KEY_Q not in parts or Tag.KEY_PARAMETER_REFERENCE not in parts:
        raise CertificateEncodingError("public key (7F49) needs B0 and F0")
    reference = parts[Tag.KEY_PARAMETER_REFERENCE]
    if len(reference) != 1 or reference[0] not in {c.value for c in Curve}:
        raise CertificateEncodingError(f"key parameter reference {reference.hex().upper()} not supported")
    curve = Curve(reference[0])
    point = parts[Tag.PUBLIC_KEY_Q]
    public_key(curve, point)  # InvalidPointError unless on the curve
    return curve, point


# What cryptography's X.509 loader and accessors raise on hostile DER (found by the fuzz test).
_X509_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    CryptographyDeprecationWarning,
)


@dataclass(frozen=True)
class X509Certificate:
    """An X.509 certificate with an EC key, as the SCP11 chains of yubikit carry."""

    der: bytes = field(repr=False)
    certificate: x509.Certificate = field(repr=False, compare=False)

    @classmethod
    def parse(cls, der: bytes) -> X509Certificate:
        der = bytes(der)
        try:
            with warnings.catch_warnings():
                # cryptography warns on RFC 5280 violations it still loads (a serial number <= 0):
                # refuse them now rather than when a later release turns them into errors
                warnings.simplefilter("error", CryptographyDeprecationWarning)
                cert = x509.load_der_x509_certificate(der)
            key = cert.public_key()
            _ = cert.signature_hash_algorithm, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.extensions
        except _X509_PARSE_ERRORS as exc:
            raise CertificateEncodingError(f"malformed X.509 certificate: {type(exc).__name__}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CertificateEncodingError("X.509 certificate without an EC public key")
        try:
            Curve.of_key(key)
        except GPError:
            raise CertificateEncodingError("X.509 certificate key on an unsupported curve") from None
        return cls(der, cert)

    def _extension(self, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
        try:
            return self.certificate.extensions.get_extension_for_class(kind).value
        except x509.ExtensionNotFound:
            return None

    @property
    def issuer_id(self) -> bytes:
        aki = self._extension(x509.AuthorityKeyIdentifier)
        if isinstance(aki, x509.AuthorityKeyIdentifier) and aki.key_identifier is not None:
            return aki.key_identifier
        return b""

    @property
    def subject_id(self) -> bytes:
        ski = self._extension(x509.SubjectKeyIdentifier)
        return ski.digest if isinstance(ski, x509.SubjectKeyIdentifier) else b""

    @property
    def curve(self) -> Curve:
        return Curve.of_key(self.public_key())

    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):  # checked in parse already
            raise CertificateEncodingError("X.509 certificate without an EC public key")
        return key

    @property
    def public_key_point(self) -> bytes:
        return encode_point(self.public_key())

    def allows(self, usage: KeyUsage) -> bool:
        ku = self._extension(x509.KeyUsage)
        if not isinstance(ku, x509.KeyUsage):
            return False  # no KeyUsage extension: nothing is allowed (never guess)
        if usage is KeyUsage.KEY_AGREEMENT:
            return ku.key_agreement
        return ku.key_cert_sign or ku.digital_signature

    def valid_on(self, today: dt.date) -> bool:
        cert = self.certificate
        return cert.not_valid_before_utc.date() <= today <= cert.not_valid_after_utc.date()

    def signed_by(self, issuer: ec.EllipticCurvePublicKey) -> bool:
        cert = self.certificate
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            return False
        try:
            issuer.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            return False
        return True

    def encode(self) -> bytes:
        return self.der


Certificate = GPCertificate | X509Certificate


def parse_certificate(data: bytes) -> Certificate:
    """A GP certificate (starts with 7F21) or a DER X.509 certificate (starts with 30)."""
    data = bytes(data)
    if data[:2] == b"\x7f\x21":
        return GPCertificate.parse(data)
    if data[:1] == b"\x30":
        return X509Certificate.parse(data)
    raise CertificateEncodingError("neither a GP certificate (7F21) nor an X.509 certificate (30)")


def parse_certificates(data: bytes) -> list[Certificate]:
    """Concatenated certificates (a PERFORM SECURITY OPERATION data field, the value of a
    certificate store BF21), in order."""
    data = bytes(data)
    out: list[Certificate] = []
    offset = 0
    while offset < len(data):
        if len(out) >= MAX_CHAIN_LENGTH:
            raise CertificateEncodingError(f"more than {MAX_CHAIN_LENGTH} certificates")
        try:
            if data[offset] == 0x30:  # X.509 SEQUENCE: one-byte tag, BER length
                length, value_start = decode_length(data, offset + 1)
            else:
                obj, end = decode_one(data, offset)
                length, value_start = len(obj.value), end - len(obj.value)
        except TLVError as exc:
            raise CertificateEncodingError(f"malformed certificate list: {exc}") from None
        end = value_start + length
        if end > len(data):
            raise CertificateEncodingError("certificate list truncated")
        out.append(parse_certificate(data[offset:end]))
        offset = end
    if not out:
        raise CertificateEncodingError("no certificate")
    return out


@dataclass(frozen=True)
class TrustAnchor:
    """A CA public key the SD trusts for OCE chains: PK.CA-KLOC.ECDSA (Amd F §6.1), stored under
    a key version (KVN) and key identifier (KID) that PERFORM SECURITY OPERATION names in P1/P2,
    with the CA-KLOC identifier (tag 42 in its certificates; the AKI for X.509) chains must name."""

    curve: Curve
    public_key_point: bytes
    ca_identifier: bytes
    kvn: int = 0x00
    kid: int = 0x00

    def __post_init__(self) -> None:
        public_key(self.curve, self.public_key_point)  # a trust anchor must be a real point

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return public_key(self.curve, self.public_key_point)


def verify_chain(
    chain: Sequence[Certificate], anchor: TrustAnchor, today: dt.date, leaf_usage: KeyUsage = KeyUsage.KEY_AGREEMENT
) -> Certificate:
    """Check ``chain`` (issued by ``anchor`` first, leaf last) and return the leaf.

    Each certificate must name its issuer (the anchor's CA identifier, then the previous
    certificate's subject identifier), carry a signature that verifies with the issuer's key, be
    valid on ``today``, and allow its use: signature verification for every certificate but the
    leaf, ``leaf_usage`` for the leaf. Raises a :class:`~gp.scp11.errors.CertificateError`
    subclass naming the first failure (or an encoding error for a malformed point).
    """
    if not chain:
        raise CertificateEncodingError("empty certificate chain")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise CertificateEncodingError(f"chain longer than {MAX_CHAIN_LENGTH}")
    issuer_key = anchor.public_key()
    issuer_id = anchor.ca_identifier
    for position, cert in enumerate(chain):
        is_leaf = position == len(chain) - 1
        if cert.issuer_id != issuer_id:
            if position == 0:
                raise UnknownTrustAnchorError("the chain does not start at the referenced CA")
            raise CertificateSignatureError(f"certificate {position} does not name the previous one as issuer")
        if isinstance(cert, GPCertificate) and cert.authorizations is not None:
            raise UnsupportedAuthorizationsError("BF20 authorisation rules are not supported")
        if not cert.signed_by(issuer_key):
            raise CertificateSignatureError(f"signature of certificate {position} does not verify")
        if not cert.valid_on(today):
            raise CertificateExpiredError(f"certificate {position} is not valid on {today.isoformat()}")
        wanted = leaf_usage if is_leaf else KeyUsage.SIGNATURE_VERIFICATION
        if not cert.allows(wanted):
            raise CertificateKeyUsageError(f"certificate {position} does not allow {wanted.name}")
        try:
            issuer_key = cert.public_key()
        except InvalidPointError:
            raise
        issuer_id = cert.subject_id
    return chain[-1]
