"""PC/SC card access through pyscard: find the named reader, wait for a card, transmit, wait for
the card's removal (a terminal serving card after card, ``--loop``).

pyscard is imported only here (the rest of the agent and its tests run without it). The card is
connected with T=0 or T=1, whichever it offers; ISO 7816-4 61xx/6Cxx follow-ups are handled by
:func:`agent.core.transmit_complete`, not by this layer.

The connection is exclusive: another application's APDU slipped between two commands of a
secure channel session (a SELECT, say) would end the session on the card, and the server would
then see the card refuse a secured command. A card held by another application is waited for
until the timeout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from agent.core import RelayError

POLL_SECONDS = 0.25


class NoReader(RelayError):
    """The named reader is not attached (or PC/SC itself is not running)."""


class NoCard(RelayError):
    """No card was presented in the reader in time."""


class CardGone(RelayError):
    """The card stopped answering (pulled from the reader, reader unplugged)."""


SHARING_VIOLATION = 0x8010000B  # SCARD_E_SHARING_VIOLATION: another application holds the card
NO_SMARTCARD = 0x8010000C  # SCARD_E_NO_SMARTCARD: the reader is empty
REMOVED_CARD = 0x80100069  # SCARD_W_REMOVED_CARD: the card was removed


def _pyscard() -> Any:
    try:
        from smartcard import CardConnection, Exceptions, System
    except ImportError as exc:  # pragma: no cover - pyscard is a requirement of the agent
        raise NoReader(f"pyscard is not installed ({exc})") from exc
    return CardConnection, Exceptions, System


def list_readers() -> list[str]:
    """Names of the attached readers; empty when PC/SC is not running."""
    _conn, exceptions, system = _pyscard()
    try:
        return [str(r) for r in system.readers()]
    except exceptions.SmartcardException:
        return []


def _find_reader(name: str) -> Any:
    _conn, exceptions, system = _pyscard()
    try:
        found = system.readers()
    except exceptions.SmartcardException as exc:
        raise NoReader(f"PC/SC is not available (is pcscd running?): {exc}") from exc
    exact = [r for r in found if str(r) == name]
    if exact:
        return exact[0]
    prefixed = [r for r in found if str(r).startswith(name)]
    if len(prefixed) == 1:
        return prefixed[0]
    names = ", ".join(repr(str(r)) for r in found) or "none"
    raise NoReader(f"reader {name!r} not found (readers: {names})")


class PcscCard:
    """A connected card: ``transmit(capdu) -> rapdu`` (data || SW)."""

    def __init__(self, connection: Any, reader: str) -> None:
        self.connection = connection
        self.reader = reader
        _conn, exceptions, _system = _pyscard()
        self._errors = (exceptions.CardConnectionException, exceptions.NoCardException)

    @property
    def atr(self) -> bytes:
        return bytes(self.connection.getATR())

    def transmit(self, capdu: bytes) -> bytes:
        try:
            data, sw1, sw2 = self.connection.transmit(list(capdu))
        except self._errors as exc:
            raise CardGone(f"the card in {self.reader!r} stopped answering: {exc}") from exc
        return bytes(data) + bytes((sw1, sw2))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the card may already be gone
            self.connection.disconnect()


def wait_for_card(
    reader_name: str,
    timeout: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PcscCard:
    """Connect to the card in ``reader_name`` (T=0 or T=1), waiting up to ``timeout`` seconds for one."""
    card_connection, exceptions, _system = _pyscard()
    from smartcard.scard import SCARD_SHARE_EXCLUSIVE

    protocols = card_connection.CardConnection.T0_protocol | card_connection.CardConnection.T1_protocol
    deadline = clock() + timeout
    reader = None
    while True:
        try:
            if reader is None:
                reader = _find_reader(reader_name)
            connection = reader.createConnection()
            connection.connect(protocols, mode=SCARD_SHARE_EXCLUSIVE)
            return PcscCard(connection, str(reader))
        except NoReader:
            if clock() >= deadline:
                raise
        except (exceptions.NoCardException, exceptions.CardConnectionException) as exc:
            if clock() >= deadline:
                if getattr(exc, "hresult", 0) & 0xFFFFFFFF == SHARING_VIOLATION:
                    raise NoCard(f"the card in reader {str(reader)!r} is in use by another application") from exc
                raise NoCard(f"no card in reader {str(reader)!r} after {timeout:g} s") from exc
        except exceptions.SmartcardException as exc:  # the reader went away
            reader = None
            if clock() >= deadline:
                raise NoReader(f"reader {reader_name!r} is not usable: {exc}") from exc
        sleep(POLL_SECONDS)


def wait_for_removal(
    reader_name: str,
    timeout: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait up to ``timeout`` seconds for the reader to be empty; True once it is.

    Polls with a shared connection: "no card" (or a reader that went away) is a removal; a card
    that answers, or one another application holds, is still there."""
    card_connection, exceptions, _system = _pyscard()
    protocols = card_connection.CardConnection.T0_protocol | card_connection.CardConnection.T1_protocol
    deadline = clock() + timeout
    while True:
        try:
            connection = _find_reader(reader_name).createConnection()
            connection.connect(protocols)
        except NoReader:
            return True
        except exceptions.NoCardException:
            return True
        except exceptions.CardConnectionException as exc:
            if getattr(exc, "hresult", 0) & 0xFFFFFFFF in (NO_SMARTCARD, REMOVED_CARD):
                return True
        except exceptions.SmartcardException:
            return True  # the reader went away: no card in it
        else:
            with contextlib.suppress(Exception):
                connection.disconnect()
        if clock() >= deadline:
            return False
        sleep(POLL_SECONDS)
