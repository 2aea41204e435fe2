"""Built-in Python behaviours for applet instances (the card does not execute Java Card bytecode).

An installed instance answers SELECT with its FCI (done by the card). Any other command goes to
the behaviour registered for the instance: the state's ``behaviours`` map (AID prefix → name)
is matched against the instance AID, then its module AID, then its ELF AID; without a match the
instance answers ``6D00`` (INS not supported), as an applet whose ``process`` rejects everything.

Behaviours:

``bank-version``
    The demo "bank applet": ``INS CA`` (any CLA/P1/P2) returns ``DF01 02 <major> <minor>`` — the
    version of the package (ELF) the instance was installed from — then ``9000``.
    ``INS CB`` returns ``DF02 <len> <instance AID>``. Everything else → ``6D00``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gp.apdu import CommandAPDU
from gp.tlv import encode_tlv


@dataclass(frozen=True)
class AppletContext:
    """What a behaviour may see of its instance."""

    aid: bytes
    module_aid: bytes
    elf_aid: bytes
    package_version: tuple[int, int]


Behaviour = Callable[[AppletContext, CommandAPDU], bytes]


def _bank_version(ctx: AppletContext, cmd: CommandAPDU) -> bytes:
    if cmd.ins == 0xCA:
        return encode_tlv(0xDF01, bytes(ctx.package_version)) + b"\x90\x00"
    if cmd.ins == 0xCB:
        return encode_tlv(0xDF02, ctx.aid) + b"\x90\x00"
    return b"\x6d\x00"


BEHAVIOURS: dict[str, Behaviour] = {"bank-version": _bank_version}

# Registered at card creation unless `init --behaviour` overrides: the openjavacard service
# package and GlobalPlatformPro's Empty test applet behave like the demo bank applet.
DEFAULT_BEHAVIOURS: dict[str, str] = {
    "A00000FFFFA4": "bank-version",
    "0102030405": "bank-version",
}


def find_behaviour(registered: dict[str, str], aids: list[bytes]) -> Behaviour | None:
    """The behaviour for the first of ``aids`` that starts with a registered prefix."""
    for aid in aids:
        text = aid.hex().upper()
        best = max((p for p in registered if text.startswith(p.upper())), key=len, default=None)
        if best is not None:
            return BEHAVIOURS.get(registered[best])
    return None
