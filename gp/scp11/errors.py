"""SCP11 errors, each under the direction classes of :mod:`gp.errors` (whose fault it is).

* Local (:class:`~gp.errors.LocalProtocolError`, our misuse): :class:`SCP11StateError`, a channel
  used out of order or asked for an option SCP11 does not have.
* Remote (:class:`~gp.errors.RemoteProtocolError`, the card's reply is not authentic):
  :class:`ReceiptError` and the :class:`CertificateError` family (a well-formed chain that must not
  be trusted, met while checking the SD's chain; the card side answers ``6600`` / ``6A81`` /
  ``6A88`` for the OCE's chain instead).
* Direction-free (:class:`~gp.errors.EncodingError`, raised by parsers that do not know where the
  bytes came from): :class:`InvalidPointError` and :class:`CertificateEncodingError`. Whoever
  received the bytes decides: the host channels raise :class:`~gp.errors.MalformedResponseError`
  (remote, the parser's error as ``__cause__``) for a point or a field in the card's authenticate
  answer; a caller that parses the SD's certificates (GET DATA ``BF21``) does the same with
  :meth:`MalformedResponseError.wrap <gp.errors.MalformedResponseError.wrap>`; a point the caller
  passes in itself (``sd_public_key``) is the caller's to judge.
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
    """The channel was used out of order, or with options SCP11 does not have (caller's misuse;
    local, like every :class:`~gp.errors.SecureChannelError`)."""


class ReceiptError(AuthenticationError):
    """The card's receipt did not verify: the key agreement data was altered or the card does not
    hold SK.SD.ECKA (remote, an :class:`~gp.errors.AuthenticationError`). Never retry blindly."""


class InvalidPointError(EncodingError):
    """An elliptic-curve public key that is not an uncompressed point on the expected curve.
    Direction-free; the host wraps it in a remote :class:`~gp.errors.MalformedResponseError` when
    the point came in the card's answer."""


class CertificateEncodingError(EncodingError):
    """A certificate that does not follow the GP (7F21) or X.509 encoding rules (direction-free,
    like every parser error; see the module docstring)."""


class CertificateError(AuthenticationError):
    """A certificate chain that is well formed but must not be trusted (remote: the chain came
    from the other side)."""


class CertificateSignatureError(CertificateError):
    """A signature in the chain does not verify with its issuer's key (wrong CA, altered data)."""


class CertificateExpiredError(CertificateError):
    """A certificate is used outside its validity (expired, or not yet effective)."""


class CertificateKeyUsageError(CertificateError):
    """A certificate's key usage does not allow what it is used for."""


class UnknownTrustAnchorError(CertificateError):
    """No trust anchor matches the reference (KVN/KID) or the CA identifier of the chain."""
