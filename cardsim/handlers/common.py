"""What every command handler shares: the ISD's AID and the status word replies.

A handler is a plain function ``handler(card, cmd, plain) -> rapdu``: it returns the response
bytes (data || SW1 SW2) or raises :class:`_Reply` with a status word.
"""

from __future__ import annotations

from cardsim.state import hx
from gp.aids import ISD_AID

ISD = hx(ISD_AID)


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _ok(data: bytes = b"") -> bytes:
    return bytes(data) + b"\x90\x00"


class _Reply(Exception):
    def __init__(self, sw: int) -> None:
        self.sw = sw
        super().__init__(f"{sw:04X}")
