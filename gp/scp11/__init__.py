"""SCP11 (GPC 2.3.1 Amendment F): public-key secure channels, GP certificates, a small CA.

* :mod:`gp.scp11.host` — :class:`SCP11a`, :class:`SCP11b`, :class:`SCP11c` (the off-card entity).
* :mod:`gp.scp11.card` — :class:`CardSCP11`, the card side the emulated card uses.
* :mod:`gp.scp11.handshake` — the key agreement both sides share; :mod:`gp.scp11.crypto` — ECKA,
  the X9.63 KDF, the receipt, plain ECDSA.
* :mod:`gp.scp11.certificates` — GP (7F21) and X.509 certificates, chains, trust anchors;
  :mod:`gp.scp11.ca` — issue them.

Sans-I/O: bytes in, bytes out; randomness and dates are passed in.
"""

from gp.scp11.ca import CertificateAuthority, KeyPair
from gp.scp11.card import CardSCP11, SDKey
from gp.scp11.certificates import (
    Certificate,
    GPCertificate,
    KeyUsage,
    TrustAnchor,
    X509Certificate,
    parse_certificate,
    parse_certificates,
    verify_chain,
)
from gp.scp11.constants import Ins, KeyUsageQualifier, SCP11Variant, Tag
from gp.scp11.crypto import Curve, SessionKeys
from gp.scp11.errors import (
    CertificateEncodingError,
    CertificateError,
    CertificateExpiredError,
    CertificateKeyUsageError,
    CertificateSignatureError,
    InvalidPointError,
    ReceiptError,
    SCP11StateError,
    UnknownTrustAnchorError,
)
from gp.scp11.host import SCP11, SCP11a, SCP11b, SCP11c

__all__ = [
    "SCP11",
    "CardSCP11",
    "Certificate",
    "CertificateAuthority",
    "CertificateEncodingError",
    "CertificateError",
    "CertificateExpiredError",
    "CertificateKeyUsageError",
    "CertificateSignatureError",
    "Curve",
    "GPCertificate",
    "Ins",
    "InvalidPointError",
    "KeyPair",
    "KeyUsage",
    "KeyUsageQualifier",
    "ReceiptError",
    "SCP11StateError",
    "SCP11Variant",
    "SCP11a",
    "SCP11b",
    "SCP11c",
    "SDKey",
    "SessionKeys",
    "Tag",
    "TrustAnchor",
    "UnknownTrustAnchorError",
    "X509Certificate",
    "parse_certificate",
    "parse_certificates",
    "verify_chain",
]
