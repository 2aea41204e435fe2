"""Commands to a selected application that is not a Security Domain: passed to its behaviour, if any."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardsim.applets import AppletContext, find_behaviour
from cardsim.constants import READ_BACK
from cardsim.handlers.common import _ok, _sw
from cardsim.state import unhx
from gp.apdu import SW, CommandAPDU

if TYPE_CHECKING:
    from cardsim.card import Card


# ------------------------------------------------------------------ applets


def applet(card: Card, cmd: CommandAPDU) -> bytes:
    app = card._apps[card.selected]
    if (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == READ_BACK:
        # The emulated card's read-back of an instance's personalisation (docs/cardsim.md), before
        # any behaviour: tests check on the card that the data arrived and survived an upgrade.
        perso = app.get("perso")
        return _sw(SW.REFERENCED_DATA_NOT_FOUND) if perso is None else _ok(unhx(perso))
    elf = card._elfs.get(app["elf"], {})
    aids = [unhx(card.selected), unhx(app["module"]), unhx(app["elf"])]
    behaviour = find_behaviour(card.state.get("behaviours", {}), aids)
    if behaviour is None:
        return _sw(SW.INS_NOT_SUPPORTED)
    ctx = AppletContext(aids[0], aids[1], aids[2], tuple(elf.get("version", (0, 0))))
    out = behaviour(ctx, cmd)
    return out if len(out) >= 2 else _sw(SW.NO_PRECISE_DIAGNOSIS)
