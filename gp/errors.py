"""The one exception hierarchy of the `gp` package.

Every error raised by `gp` derives from :class:`GPError`, so callers can catch
protocol failures without also swallowing programming errors.
"""

from __future__ import annotations


class GPError(Exception):
    """Base class of every error raised by the `gp` package."""


class EncodingError(GPError):
    """Bytes that do not follow the encoding rules (APDU, BER-TLV, CAP, key data)."""


class APDUError(EncodingError):
    """A malformed command or response APDU."""


class TLVError(EncodingError):
    """Malformed BER-TLV data (truncated, bad length, bad tag)."""


class CAPError(EncodingError):
    """A malformed or unsupported load file (CAP or IJC)."""


class StatusWordError(GPError):
    """The card answered with a status word the caller did not expect."""

    def __init__(self, sw: int, message: str = "") -> None:
        self.sw = sw
        super().__init__(message or f"unexpected status word {sw:04X}")


class SecureChannelError(GPError):
    """Secure channel failure: wrong state, unsupported option, or bad parameters."""


class AuthenticationError(SecureChannelError):
    """The card cryptogram did not verify: wrong keys or a card that is not who it claims.

    Never retry blindly: cards block a key set after a few failed authentications.
    """


class MACError(SecureChannelError):
    """A C-MAC or R-MAC did not verify: the APDU was altered or keys differ."""


class KeyMaterialError(GPError):
    """Invalid key material (wrong length, parity, algorithm, or check value)."""


class LoadError(GPError):
    """A load cannot be carried out as asked (e.g. block count beyond one byte without extended length)."""


class DelegatedManagementError(GPError):
    """A Delegated Management token or receipt is malformed or does not verify."""
