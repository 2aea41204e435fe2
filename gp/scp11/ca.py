"""A minimal certificate authority for SCP11: make a CA key, issue SD / OCE / sub-CA certificates
in the GP format (Amd F §6.2) or X.509, for tests, the demo and the platform.

Nothing here reads a clock or the system's randomness behind the caller's back: dates are
arguments and key generation takes a ``random`` callable (default ``os.urandom``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gp.scp11.certificates import GPCertificate, KeyUsage, TrustAnchor, X509Certificate
from gp.scp11.crypto import Curve, ecdsa_sign, encode_point, random_private_key

__all__ = ["CertificateAuthority", "KeyPair"]


@dataclass(frozen=True)
class KeyPair:
    """An EC key pair; ``repr`` shows the public point only."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, curve: Curve = Curve.P256, random: Callable[[int], bytes] = os.urandom) -> KeyPair:
        return cls(random_private_key(curve, random))

    @property
    def curve(self) -> Curve:
        return Curve.of_key(self.private_key)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    @property
    def public_point(self) -> bytes:
        return encode_point(self.public_key)

    @property
    def private_scalar(self) -> int:
        return self.private_key.private_numbers().private_value


def _x509_name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA: its key pair and the identifier it writes as CA-KLOC identifier (tag 42) in what it
    issues (for X.509, the key identifier that becomes the AKI)."""

    keys: KeyPair
    identifier: bytes
    name: str = "E-Card SCP11 CA"

    @classmethod
    def generate(
        cls,
        identifier: bytes,
        curve: Curve = Curve.P256,
        name: str = "E-Card SCP11 CA",
        random: Callable[[int], bytes] = os.urandom,
    ) -> CertificateAuthority:
        return cls(KeyPair.generate(curve, random), bytes(identifier), name)

    def trust_anchor(self, kvn: int = 0x00, kid: int = 0x00) -> TrustAnchor:
        """What an SD stores to trust chains from this CA (PK.CA-KLOC.ECDSA under KVN/KID)."""
        return TrustAnchor(self.keys.curve, self.keys.public_point, self.identifier, kvn, kid)

    def issue(
        self,
        *,
        serial_number: bytes,
        subject_identifier: bytes,
        public_key: ec.EllipticCurvePublicKey,
        key_usage: KeyUsage,
        expiration_date: dt.date,
        effective_date: dt.date | None = None,
        discretionary_data: bytes | None = None,
    ) -> GPCertificate:
        """A GP certificate (7F21) signed by this CA."""
        body = GPCertificate.to_be_signed(
            serial_number=serial_number,
            ca_identifier=self.identifier,
            subject_identifier=subject_identifier,
            key_usage=key_usage,
            expiration_date=expiration_date,
            public_key=public_key,
            effective_date=effective_date,
            discretionary_data=discretionary_data,
        )
        signature = ecdsa_sign(self.keys.private_key, body)
        return GPCertificate.parse(
            GPCertificate(
                serial_number=serial_number,
                ca_identifier=self.identifier,
                subject_identifier=subject_identifier,
                key_usage=key_usage,
                expiration_date=expiration_date,
                curve=Curve.of_key(public_key),
                public_key_point=encode_point(public_key),
                signature=signature,
                signed_data=body,
            ).encode()
        )

    def sub_ca(
        self,
        keys: KeyPair,
        identifier: bytes,
        *,
        serial_number: bytes,
        expiration_date: dt.date,
        effective_date: dt.date | None = None,
    ) -> tuple[CertificateAuthority, GPCertificate]:
        """An intermediate CA (a KLOC/KA certificate with key usage 82) and its certificate."""
        cert = self.issue(
            serial_number=serial_number,
            subject_identifier=identifier,
            public_key=keys.public_key,
            key_usage=KeyUsage.SIGNATURE_VERIFICATION,
            expiration_date=expiration_date,
            effective_date=effective_date,
        )
        return CertificateAuthority(keys, bytes(identifier), f"{self.name} / {identifier.hex().upper()}"), cert

    def issue_x509(
        self,
        *,
        serial_number: int,
        subject_name: str,
        subject_identifier: bytes,
        public_key: ec.EllipticCurvePublicKey,
        key_usage: KeyUsage,
        not_before: dt.date,
        not_after: dt.date,
        digital_signature: bool = False,
    ) -> X509Certificate:
        """An X.509 certificate signed by this CA (the form yubikit sends in SCP11a/c).
        ``digital_signature`` adds that usage to a key-agreement key (an OCE's key also signs)."""
        is_ca = key_usage is KeyUsage.SIGNATURE_VERIFICATION
        agreement = key_usage is KeyUsage.KEY_AGREEMENT
        builder = (
            x509.CertificateBuilder()
            .subject_name(_x509_name(subject_name))
            .issuer_name(_x509_name(self.name))
            .public_key(public_key)
            .serial_number(serial_number)
            .not_valid_before(dt.datetime.combine(not_before, dt.time.min, dt.UTC))
            .not_valid_after(dt.datetime.combine(not_after, dt.time(23, 59, 59), dt.UTC))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=is_ca or digital_signature,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=agreement,
                    key_cert_sign=is_ca,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier(subject_identifier), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(self.identifier, None, None), critical=False)
        )
        cert = builder.sign(self.keys.private_key, self.keys.curve.hash_algorithm())
        return X509Certificate.parse(cert.public_bytes(Encoding.DER))
