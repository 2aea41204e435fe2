"""MANAGE ELF UPGRADE (GP Amendment H, Executable Load File Upgrade): upgrade sessions that keep
the instances' data. Wire encoding: :mod:`gp.commands.upgrade`; the sequence: docs/elf-upgrade.md.

The session lives in the state's ``upgrade`` record (non-volatile), so a card pulled at any
point keeps it and STATUS reports it after the next power-up::

    upgrade   {elf, sd, by, status, old {the ELF's registry record}, instances {AID: app record}}

Every step is one command, and every command changes the state in one write: START (instances
saved with their data, old ELF out of the registry), the last LOAD block of the new version
(status WAITING_FOR_RESUME), RESUME (instances back, session gone) or ABORT / RECOVERY. So a
card is always fully old, in a session that can be resumed or rolled back, or fully new.

While a session is open the registry is frozen except for the load of the new version (the card
answers 6985 to any other INSTALL and to DELETE): nothing can come to depend on the new ELF or
take a saved instance's AID before the session ends. A library that another load file imports
cannot be upgraded (6985), as its importers would be left unlinked.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from cardsim.handlers.common import _ok, _Reply, _sw
from cardsim.state import hx, unhx
from gp.apdu import SW, CommandAPDU
from gp.commands.upgrade import (
    UpgradeAction,
    UpgradeOutcome,
    UpgradeSessionStatus,
    upgrade_response,
)
from gp.errors import GPError
from gp.tlv import decode_all

if TYPE_CHECKING:
    from cardsim.card import Card


def session(card: Card) -> dict[str, Any] | None:
    """The upgrade session in progress, or None (a state file from before upgrades has none)."""
    record: dict[str, Any] | None = card.state.get("upgrade")
    return record


def refuse_during_session(card: Card, *, loading_elf: str | None = None, target_sd: str | None = None) -> None:
    """6985 for a registry change while a session is open; only the INSTALL [for load] of the new
    version of the ELF under upgrade, into the same SD, while it is awaited, goes through."""
    current = session(card)
    if current is None:
        return
    if (
        loading_elf == current["elf"]
        and target_sd == current["sd"]
        and current["status"] == UpgradeSessionStatus.WAITING_FOR_LOAD
    ):
        return
    raise _Reply(SW.CONDITIONS_NOT_SATISFIED)


def new_version_loaded(card: Card, elf: str) -> None:
    """Called in the state change that registers a load file: the awaited new version is in."""
    current = session(card)
    if current is not None and current["elf"] == elf:
        current["status"] = UpgradeSessionStatus.WAITING_FOR_RESUME


def _answer(card: Card, outcome: UpgradeOutcome | None = None) -> bytes:
    current = session(card)
    if current is None:
        return _ok(upgrade_response(UpgradeSessionStatus.NO_SESSION, outcome=outcome))
    status = UpgradeSessionStatus(current["status"])
    if not card._visible(current["sd"]):
        return _ok(upgrade_response(status))  # another SD's session: that the card is busy, no more
    instances = tuple(unhx(aid) for aid in current["instances"])
    return _ok(upgrade_response(status, unhx(current["elf"]), instances, outcome))


def manage_elf_upgrade(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    if not card.state.get("elf_upgrade", False):
        return _sw(SW.INS_NOT_SUPPORTED)  # a card without Amendment H
    card._require_session()
    if cmd.p2 != 0x00:
        return _sw(SW.INCORRECT_P1P2)
    try:
        action = UpgradeAction(cmd.p1)
    except ValueError:
        return _sw(SW.INCORRECT_P1P2)
    if action is UpgradeAction.STATUS:
        return _answer(card)
    card._require_card_open()
    # Our choice where the amendment's text was not at hand (docs/elf-upgrade.md): a Delegated
    # Management SD may run a session without a token. Nothing it does is irreversible without
    # one: START only sets the package aside (ABORT or RECOVERY restore it), the new version's
    # INSTALL [for load] and LOAD need their tokens as always, and RESUME only re-creates the
    # saved instances from that token-approved code.
    if action is UpgradeAction.START:
        return _start(card, cmd.data)
    current = session(card)
    if current is None or not card._visible(current["sd"]):
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # no session (of this SD) to act on
    if action is UpgradeAction.RESUME:
        if current["status"] != UpgradeSessionStatus.WAITING_FOR_RESUME:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # the new version is not loaded yet
        if not _can_resume(card, current):
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # cannot preserve data: the session stays
        _resume(card, current)
        return _answer(card, UpgradeOutcome.UPGRADED)
    if action is UpgradeAction.RECOVERY and _can_resume(card, current):
        _resume(card, current)
        return _answer(card, UpgradeOutcome.UPGRADED)
    _roll_back(card, current)  # ABORT, or RECOVERY of a session that cannot complete
    return _answer(card, UpgradeOutcome.ROLLED_BACK)


def _start(card: Card, data: bytes) -> bytes:
    if session(card) is not None:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # one session at a time
    try:
        objs = decode_all(data)
    except GPError:
        return _sw(SW.WRONG_DATA)
    if len(objs) != 1 or objs[0].tag != 0x4F or not 5 <= len(objs[0].value) <= 16:
        return _sw(SW.WRONG_DATA)
    elf_aid = hx(objs[0].value)
    elf = card._elfs.get(elf_aid)
    if elf is None or not card._visible(elf["sd"]):
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if elf["rom"]:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)
    if any(imp[0] == elf_aid for other in card._elfs.values() for imp in other["imports"]):
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # a library others import
    instances = {aid: app for aid, app in card._apps.items() if app["elf"] == elf_aid}
    if any(card._is_sd(aid) for aid in instances):
        return _sw(SW.CONDITIONS_NOT_SATISFIED)
    card.state["upgrade"] = {
        "elf": elf_aid,
        "sd": elf["sd"],
        "by": card.selected,
        "status": int(UpgradeSessionStatus.WAITING_FOR_LOAD),
        "old": copy.deepcopy(elf),
        "instances": copy.deepcopy(instances),
    }
    for aid in instances:
        del card._apps[aid]
    del card._elfs[elf_aid]
    if card.perso_target in instances:
        card.perso_target, card.perso_pending = None, b""
    card._changed()
    return _answer(card)


def _can_resume(card: Card, current: dict[str, Any]) -> bool:
    """The new version is loaded and has the applet class (module) of every saved instance."""
    if current["status"] != UpgradeSessionStatus.WAITING_FOR_RESUME:
        return False
    new = card._elfs.get(current["elf"])
    if new is None:
        return False
    modules = {m["aid"] for m in new["modules"]}
    return all(app["module"] in modules and app["sd"] in card._sds for app in current["instances"].values())


def _resume(card: Card, current: dict[str, Any]) -> None:
    for aid, app in current["instances"].items():
        card._apps[aid] = app  # same AID, privileges, life cycle, SD, parameters and data
    card.state["upgrade"] = None
    card._changed()


def _roll_back(card: Card, current: dict[str, Any]) -> None:
    """Back to the old ELF and its instances with their data; a new version loaded meanwhile goes
    (nothing can depend on it: the registry was frozen)."""
    card._abort_load()
    card._elfs.pop(current["elf"], None)
    card._elfs[current["elf"]] = current["old"]
    for aid, app in current["instances"].items():
        card._apps[aid] = app
    card.state["upgrade"] = None
    card._changed()


def memory_held(card: Card, instance_cost: int) -> int:
    """NVM a session holds: the old code (kept for a roll back) and the saved instances with their data."""
    current = session(card)
    if current is None:
        return 0
    held: int = current["old"]["size"]
    for app in current["instances"].values():
        held += instance_cost + len(app.get("perso") or "") // 2
    return held
