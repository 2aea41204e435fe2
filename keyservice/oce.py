"""The OCE certificate's rotation (docs/keyservice.md, "/v1/oce/..."): a new P-256 key pair in
the token, a PKCS#10 request signed by the token (RFC 2986), and the certificate the agency's
OCE CA issued, installed when its public key is the pending key's.

cryptography signs CSRs only with keys it holds, so the request is assembled here in DER and
the token signs ``CertificationRequestInfo``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from keyservice.channels import ServiceError
from keyservice.token import BankToken, OcePublicKey

ECDSA_WITH_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")  # AlgorithmIdentifier (RFC 5758 §3.2)


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes((0x80 | len(raw),)) + raw
    return bytes((tag,)) + length + value


def certification_request_info(common_name: str, point: bytes) -> bytes:
    """RFC 2986 §4.1: SEQUENCE { version 0, subject, subjectPKInfo, attributes [0] {} }."""
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]).public_bytes()
    return _der(0x30, bytes.fromhex("020100") + subject + spki + bytes.fromhex("a000"))


class OceAuthority:
    """The bank's OCE key pair (in its token) and the certificate the agency's OCE CA issued for
    it, kept in ``store`` (public: a certificate) so that a restart still reports it."""

    def __init__(self, token: BankToken, bank: str, store: Path | None = None) -> None:
        self.token, self.bank, self.store = token, bank, store
        self.pending: OcePublicKey | None = None

    def installed(self) -> dict[str, Any] | None:
        """The certificate installed before this process started, if any."""
        if self.store is None or not self.store.exists():
            return None
        return _summary(x509.load_pem_x509_certificate(self.store.read_bytes()))

    def new_request(self) -> str:
        pending = self.token.generate_oce_key()
        info = certification_request_info(f"{self.bank} OCE", pending.point)
        raw = self.token.oce_sign(pending.label, info)
        signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        der = _der(0x30, info + ECDSA_WITH_SHA256 + _der(0x03, b"\x00" + signature))
        x509.load_der_x509_csr(der)  # what we hand out must parse
        self.pending = pending
        body = base64.encodebytes(der).decode()
        return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"

    def install(self, pem: str) -> dict[str, Any]:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            raise ServiceError(400, "malformed", "platform", "'certificate' is not a PEM certificate") from None
        public = cert.public_key()
        point = (
            public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            if isinstance(public, ec.EllipticCurvePublicKey)
            else b""
        )
        if self.pending is None or point != self.pending.point:
            raise ServiceError(409, "oce", "platform", "the certificate's key is not the pending OCE key")
        self.pending = None
        if self.store is not None:
            partial = self.store.with_suffix(".tmp")
            partial.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            os.replace(partial, self.store)  # atomic: the old certificate or the new, never half
        return _summary(cert)


def _summary(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "serial": f"{cert.serial_number:X}",
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }
