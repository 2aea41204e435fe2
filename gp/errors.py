"""The one exception hierarchy of the `gp` package, and whose fault each error is.

Every error raised by `gp` derives from :class:`GPError`, so callers can catch protocol failures
without also swallowing programming errors. Below it, an error says who is to blame (the split of
h11's ``LocalProtocolError`` / ``RemoteProtocolError``):

* :class:`LocalProtocolError`: *we* misused an object of this library. A channel used in the wrong
  state, a builder given an argument the encoding cannot carry, an option we asked for that the
  library does not implement, key material we passed in. Nothing the other side sent can cause it,
  so in a caller it is a bug: report it as one, never blame the card or the relay for it.
* :class:`RemoteProtocolError`: the *other side's* reply is malformed or not authentic: a card
  cryptogram or R-MAC that does not verify, an INITIALIZE UPDATE answer of the wrong shape, an
  unexpected status word. It carries the status word (``sw``, when there is one) and its name
  (:func:`gp.apdu.sw_name`). A caller talking to a card rejects the session on it.

The rule for code that serves both sides. Parsers (:mod:`gp.tlv`, :mod:`gp.apdu`, the response and
command parsers of :mod:`gp.commands`, :mod:`gp.cap`, :mod:`gp.dm`) do not know where their bytes
came from, so they raise the direction-free :class:`EncodingError`; whoever *received* the bytes
decides. The host channels raise :class:`MalformedResponseError` (remote) for a card reply they
cannot parse, and callers that parse card data themselves do the same with
:meth:`MalformedResponseError.wrap` (or treat any non-local :class:`GPError` as remote). The card side
(``gp.scp.card``, ``cardsim``) turns every error from the host's bytes into a status word, so for it
the direction is moot; it is named from the host's point of view throughout. Builders check their
arguments and raise :class:`InvalidCommandError`, which is both local and an
:class:`APDUError` (callers that catch encoding errors keep working).
"""

from __future__ import annotations


class GPError(Exception):
    """Base class of every error raised by the `gp` package."""


class LocalProtocolError(GPError):
    """Our own misuse of a channel, builder or parser argument: a bug in the caller, not the card's fault."""


class RemoteProtocolError(GPError):
    """A reply from the other side that is malformed or not authentic.

    ``sw`` is the reply's status word when it had one, else None; ``sw_name`` its name.
    """

    def __init__(self, message: str = "", *, sw: int | None = None) -> None:
        self.sw = sw
        super().__init__(message or (f"unexpected status word {sw:04X}" if sw is not None else "bad reply"))

    @property
    def sw_name(self) -> str | None:
        """The status word's name (``gp.apdu.SW``), e.g. ``SECURITY_STATUS_NOT_SATISFIED``."""
        if self.sw is None:
            return None
        from gp.apdu import sw_name  # gp.apdu imports this module

        return sw_name(self.sw)


class EncodingError(GPError):
    """Bytes that do not follow the encoding rules (APDU, BER-TLV, CAP, key data). Direction-free:
    the receiver of the bytes decides whose fault it is (see the module docstring)."""


class APDUError(EncodingError):
    """A malformed command or response APDU."""


class TLVError(EncodingError):
    """Malformed BER-TLV data (truncated, bad length, bad tag)."""


class CAPError(EncodingError):
    """A malformed or unsupported load file (CAP or IJC)."""


class InvalidCommandError(LocalProtocolError, APDUError):
    """A command cannot be built as asked: a builder was given a value its encoding cannot carry
    (an AID of 3 bytes, a P1 GP does not define), or a plain command does not fit once secured."""


class MalformedResponseError(RemoteProtocolError):
    """A reply whose bytes do not parse or do not have the shape the protocol fixes for it."""

    @classmethod
    def wrap(cls, exc: EncodingError, what: str, *, sw: int | None = None) -> MalformedResponseError:
        """The remote error for a reply ``what`` that a direction-free parser refused with ``exc``."""
        error = cls(f"{what}: {exc}", sw=sw)
        error.__cause__ = exc
        return error


class StatusWordError(RemoteProtocolError):
    """The card answered with a status word the caller did not expect."""

    def __init__(self, sw: int, message: str = "") -> None:
        super().__init__(message, sw=sw)


class SecureChannelError(LocalProtocolError):
    """Misuse of a secure channel: wrong state, unsupported option, bad parameters or session state."""


class AuthenticationError(RemoteProtocolError):
    """The card cryptogram did not verify: wrong keys or a card that is not who it claims.

    Never retry blindly: cards block a key set after a few failed authentications.
    """


class MACError(RemoteProtocolError):
    """A C-MAC or R-MAC did not verify, or secured data does not decrypt: the APDU was altered or keys differ."""


class KeyMaterialError(LocalProtocolError):
    """Invalid key material given to the library (wrong length, parity, algorithm, or check value)."""


class LoadError(LocalProtocolError):
    """A load cannot be carried out as asked (e.g. block count beyond one byte without extended length)."""


class DelegatedManagementError(GPError):
    """A Delegated Management token or receipt is malformed or does not verify (direction-free like
    :class:`EncodingError`: a receipt comes from the card, a token from the platform)."""
