"""Relay logic, independent of how the card and the server are reached.

``run_session`` opens a session, runs each batch against the card in order, stops at the first
status word the server did not expect, and posts the responses back — a handful of round trips
per job whatever the size of the applet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gp.apdu import CommandAPDU, get_response_command, resend_with_le


class CardTransport(Protocol):
    def transmit(self, capdu: bytes) -> bytes: ...


class Server(Protocol):
    def open_session(self, mode: str) -> dict[str, Any]: ...

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]: ...


class RelayError(Exception):
    """The session could not be completed; the message says why (for the person holding the card)."""


class NoMoreCards(RelayError):
    """A card source that presents a fixed set of cards (emulated ones) has presented them all."""


@dataclass
class SessionResult:
    session: str
    round_trips: int
    apdus: int
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pending: int = 0
    error: str = ""
    card: str = ""  # the CIN the server identified (empty when it identified none)
    waiting: int = 0  # jobs a terminal may not run: they wait for the holder's own device

    @property
    def ok(self) -> bool:
        return not self.error and all(job.get("state") == "done" for job in self.jobs)


def transmit_complete(card: CardTransport, capdu: bytes) -> bytes:
    """Transmit, following ISO 7816-4 61xx (GET RESPONSE) and 6Cxx (wrong Le) transparently."""
    response = card.transmit(capdu)
    data = b""
    for _ in range(64):
        sw = int.from_bytes(response[-2:], "big")
        follow = get_response_command(sw)  # 61xx: GET RESPONSE; None for any other status word
        if follow is not None:
            data += response[:-2]
        elif sw >> 8 == 0x6C:
            follow = resend_with_le(CommandAPDU.from_bytes(capdu), sw)
        if follow is None:
            break
        response = card.transmit(follow.to_bytes())
    return data + response


def run_batch(card: CardTransport, commands: list[dict[str, Any]]) -> list[str]:
    """Run commands in order; stop after the first response whose status word was not expected."""
    responses: list[str] = []
    for command in commands:
        rapdu = transmit_complete(card, bytes.fromhex(command["apdu"]))
        responses.append(rapdu.hex().upper())
        if f"{int.from_bytes(rapdu[-2:], 'big'):04X}" not in command["expect"]:
            break
    return responses


def run_session(
    card: CardTransport,
    server: Server,
    *,
    mode: str = "batch",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> SessionResult:
    answer = server.open_session(mode)
    session = answer["session"]
    round_trips = 1
    apdus = 0
    while not answer.get("done"):
        if on_progress is not None:
            on_progress(answer.get("progress") or {})
        responses = run_batch(card, answer["commands"])
        apdus += len(responses)
        answer = server.exchange(session, answer["exchange"], responses)
        round_trips += 1
    result = answer.get("result") or {}
    if on_progress is not None:
        on_progress(answer.get("progress") or {})
    return SessionResult(
        session=session,
        round_trips=round_trips,
        apdus=apdus,
        jobs=list(result.get("jobs", [])),
        pending=int(result.get("pending", 0)),
        error=str(result.get("error", "")),
        card=str(result.get("card", "")),
        waiting=int(result.get("waiting_for_holder", 0)),
    )
