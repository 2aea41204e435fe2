"""Commands to a selected application that is not a Security Domain: passed to its behaviour, if any."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardsim.applets import AppletContext, find_behaviour
from cardsim.handlers.common import _sw
from cardsim.state import unhx
from gp.apdu import SW, CommandAPDU

if TYPE_CHECKING:
    from cardsim.card import Card


# ------------------------------------------------------------------ applets


def applet(card: Card, cmd: CommandAPDU) -> bytes:
    app = card._apps[card.selected]
    elf = card._elfs.get(app["elf"], {})
    aids = [unhx(card.selected), unhx(app["module"]), unhx(app["elf"])]
    behaviour = find_behaviour(card.state.get("behaviours", {}), aids)
    if behaviour is None:
        return _sw(SW.INS_NOT_SUPPORTED)
    ctx = AppletContext(aids[0], aids[1], aids[2], tuple(elf.get("version", (0, 0))))
    out = behaviour(ctx, cmd)
    return out if len(out) >= 2 else _sw(SW.NO_PRECISE_DIAGNOSIS)
