"""SCP11 errors, each a subclass of the existing :mod:`gp.errors` classes.

TODO(merge): the lead maps these onto the local (own misuse) / remote (card's fault) classes:
:class:`ReceiptError`, :class:`InvalidPointError` met in a card reply and the certificate
errors met while checking the SD's chain are remote; :class:`SCP11StateError` is local.
"""

from __future__ import annotations

from gp.errors import AuthenticationError, EncodingError, SecureChannelError

__all__ = [
    "CertificateEncodingError",
    "CertificateError",
    "CertificateExpiredError",
    "CertificateKeyUsageError",
    "CertificateSignatureError",
    "InvalidPointError",
    "ReceiptError",
    "SCP11StateError",
    "UnknownTrustAnchorError",
]


class SCP11StateError(SecureChannelError):
    """The channel was used out of order, or with options SCP11 does not have (caller's misuse)."""


class ReceiptError(AuthenticationError):
    """The card's receipt did not verify: the key agreement data was altered or the card does not
    hold SK.SD.ECKA. Never retry blindly."""


class InvalidPointError(EncodingError):
    """An elliptic-curve public key that is not an uncompressed point on the expected curve."""


class CertificateEncodingError(EncodingError):
    """A certificate that does not follow the GP (7F21) or X.509 encoding rules."""


class CertificateError(AuthenticationError):
    """A certificate chain that is well formed but must not be trusted."""


class CertificateSignatureError(CertificateError):
    """A signature in the chain does not verify with its issuer's key (wrong CA, altered data)."""


class CertificateExpiredError(CertificateError):
    """A certificate is used outside its validity (expired, or not yet effective)."""


class CertificateKeyUsageError(CertificateError):
    """A certificate's key usage does not allow what it is used for."""


class UnknownTrustAnchorError(CertificateError):
    """No trust anchor matches the reference (KVN/KID) or the CA identifier of the chain."""
