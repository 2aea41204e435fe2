"""What SCP02 and SCP03 share: security levels, channel states, the secured response, SM helpers.

Section numbers refer to GlobalPlatform Card Specification v2.3.1 (GPC_SPE_034) and its
Amendment D v1.2 (SCP03, "Amd D").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gp.apdu import CommandAPDU
from gp.crypto import AESKey, DES3Key
from gp.errors import APDUError, InvalidCommandError


class SecurityLevel(enum.IntFlag):
    """The protection of a session's APDUs, sent as P1 of EXTERNAL AUTHENTICATE (Amd D §5.3.1
    Table 5-2 and §7.2; GPC 2.3.1 §E.5.2 for SCP02). ``NONE`` is authentication only."""

    NONE = 0x00
    C_MAC = 0x01
    C_DEC = 0x02  # always with C_MAC
    R_MAC = 0x10
    R_ENC = 0x20  # SCP03 only, always with C_DEC and R_MAC
    # GPC 2.3.1 §10.6 Table 10-1: the off-card entity was authenticated. Never sent in P1; SCP11a
    # and SCP11c report AUTHENTICATED in their session's level, SCP11b does not.
    ANY_AUTHENTICATED = 0x40
    AUTHENTICATED = 0x80


# The combinations each protocol defines (Amd D §7.2; GPC 2.3.1 §E.5.2).
SCP03_LEVELS = frozenset({0x00, 0x01, 0x03, 0x11, 0x13, 0x33})
SCP02_LEVELS = frozenset({0x00, 0x01, 0x03, 0x11, 0x13})


class ChannelState(enum.StrEnum):
    """Where a secure channel object stands (GPC 2.3.1 §10.2: initiation, then the session).

    The values are the ones stored in :meth:`session_state` dicts, so sealed states stay readable.
    """

    IDLE = "new"  # nothing sent yet (card: no session)
    INITIALIZED = "initialized"  # INITIALIZE UPDATE built (card: answered), awaiting EXTERNAL AUTHENTICATE
    OPEN = "authenticated"  # EXTERNAL AUTHENTICATE done: wrap/unwrap allowed
    CLOSED = "closed"  # a verification failure ended the session; use a new channel object


_ZERO16 = bytes(16)
_ZERO8 = bytes(8)


@dataclass(frozen=True)
class SecuredResponse:
    """A response unwrapped by a host channel, and whether the card's R-MAC covered it.

    ``authenticated`` is False for status words that carry no R-MAC (Amd D §6.2.5, GP 2.3.1
    §E.4.5: only 9000 and the warnings 62xx/63xx do), for the bare EXTERNAL AUTHENTICATE answer,
    and at security levels without R-MAC. Such an answer could have come from anyone on the
    path, so nothing may be concluded from it but "not confirmed".
    """

    data: bytes
    sw: int
    authenticated: bool

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")


def _rmac_expected(sw: int) -> bool:
    """Amd D §6.2.5: R-MAC only on 9000 and on warnings 62xx/63xx."""
    return sw == 0x9000 or (sw >> 8) in (0x62, 0x63)


def _sm_cla(cla: int) -> int:
    """Set the secure messaging indication in CLA (GP 2.3.1 §11.1.4)."""
    if cla & 0x40:  # further interindustry class: b6 indicates SM
        return cla | 0x20
    return cla | 0x04


def _has_sm(cla: int) -> bool:
    return bool(cla & 0x20) if cla & 0x40 else bool(cla & 0x04)


def _plain_cla(cla: int) -> int:
    return cla & ~0x20 if cla & 0x40 else cla & ~0x04


def _lc(n: int, extended: bool) -> bytes:
    if extended:
        return b"\x00" + n.to_bytes(2, "big")
    return bytes((n,))


def _le(le: int | None, extended: bool) -> bytes:
    # after an Lc field: short Le is 1 byte, extended Le 2 bytes (ISO 7816-4 §5.1)
    if le is None:
        return b""
    if extended:
        return (le & 0xFFFF).to_bytes(2, "big")
    return bytes((le & 0xFF,))


def _check_fits(n: int, extended: bool, plain_len: int, max_plain: int) -> None:
    limit = 65535 if extended else 255
    if n > limit:
        raise InvalidCommandError(
            f"secured data field would be {n} bytes, more than a {'extended' if extended else 'short'} "
            f"Lc allows ({limit}); at this security level at most {max_plain} plain bytes fit "
            f"(got {plain_len}){'' if extended else '; use extended length'}"
        )


def _hexkey(key: AESKey | DES3Key) -> str:
    return key.key.hex().upper()


def _plain_command(capdu: bytes) -> CommandAPDU:
    """Parse a plain command the caller asked us to wrap: a malformed one is the caller's mistake."""
    try:
        return CommandAPDU.from_bytes(capdu)
    except InvalidCommandError:
        raise
    except APDUError as exc:
        raise InvalidCommandError(f"cannot wrap a malformed command: {exc}") from exc
