"""INITIALIZE UPDATE and EXTERNAL AUTHENTICATE: opening a session (GP 2.3.1 §11.13, §11.11 / Amd D §7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardsim.handlers.common import _sw
from cardsim.state import kvn_key, static_keys, unhx
from gp.apdu import SW, CommandAPDU
from gp.errors import GPError
from gp.scp.card import CardSCP02, CardSCP03

if TYPE_CHECKING:
    from cardsim.card import Card


# ------------------------------------------------------------------ secure channel (§11.13, §11.11 / Amd D §7)


def default_kvn(card: Card, sd: str) -> int | None:
    info = card._sds[sd]
    kind = "des" if info["scp"] == 0x02 else "aes"
    for kvn, rec in info["keys"].items():
        if rec["type"] == kind and len(rec["keys"]) == 3:
            return int(kvn, 16)
    return None


def initialize_update(card: Card, raw: bytes, cmd: CommandAPDU) -> bytes:
    card._end_session()  # INITIALIZE UPDATE starts a new session (the old one ends)
    if not cmd.cla & 0x80:
        return _sw(SW.CLA_NOT_SUPPORTED)
    info = card._sds[card.selected]
    kvn = cmd.p1 or default_kvn(card, card.selected)
    rec = info["keys"].get(kvn_key(kvn)) if kvn is not None else None
    if kvn is None or rec is None or rec["type"] not in ("aes", "des") or len(rec["keys"]) != 3:
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # §11.13.3: key set not found
    if rec["failures"] >= card.state["auth_limit"]:
        return _sw(SW.AUTHENTICATION_METHOD_BLOCKED)  # the key set is blocked after too many failed authentications
    keys = static_keys(rec, kvn)
    kdd = unhx(card.state["kdd"])
    channel: CardSCP02 | CardSCP03
    try:
        if info["scp"] == 0x02:
            if rec["type"] != "des":
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)
            channel = CardSCP02(
                keys,
                i=info["i"],
                sd_aid=unhx(card.selected),
                sequence_counter=rec["counter"],
                kdd=kdd,
                card_challenge_random=card._random,
            )
        else:
            if rec["type"] != "aes":
                return _sw(SW.REFERENCED_DATA_NOT_FOUND)
            s16 = len(cmd.data) == 16  # Amd D §7.1.1: a 16-byte host challenge selects S16 mode
            channel = CardSCP03(
                keys,
                s16=s16,
                i=info["i"] | (0x01 if s16 else 0),
                sd_aid=unhx(card.selected),
                sequence_counter=rec["counter"],
                kdd=kdd,
                card_challenge_random=card._random,
            )
    except GPError:
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    out = channel.initialize_update(raw)
    if out[-2:] == b"\x90\x00":
        card.channel, card.channel_kvn = channel, kvn
        if channel.sequence_counter != rec["counter"]:
            rec["counter"] = channel.sequence_counter
            card._changed()
    return out


def external_authenticate(card: Card, raw: bytes) -> bytes:
    channel, kvn = card.channel, card.channel_kvn
    if channel is None or kvn is None:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # §11.11.3: no INITIALIZE UPDATE before
    out = channel.external_authenticate(raw)
    rec = card._sds[card.selected]["keys"][kvn_key(kvn)]
    if out == b"\x90\x00":
        if rec["failures"]:
            rec["failures"] = 0
            card._changed()
        return out
    card._end_session()
    if out in (b"\x63\x00", b"\x69\x82"):
        # A wrong host cryptogram (or C-MAC) counts against the key set; at the limit it is blocked.
        rec["failures"] += 1
        card._changed()
    return out
