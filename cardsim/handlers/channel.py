"""INITIALIZE UPDATE and EXTERNAL AUTHENTICATE: opening a session (GP 2.3.1 §11.13, §11.11 / Amd D §7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardsim import scp11
from cardsim.constants import DEFAULT_SCP03
from cardsim.handlers.common import _sw
from cardsim.state import kvn_key, static_keys, unhx
from gp.apdu import SW, CommandAPDU
from gp.errors import GPError
from gp.scp.card import CardSCP02, CardSCP03
from gp.scp11 import Ins

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
            # An SD installed for SCP11 speaks SCP03 with the card's default i once it has the keys.
            i = info["i"] if info["scp"] == 0x03 else DEFAULT_SCP03[1]
            channel = CardSCP03(
                keys,
                s16=s16,
                i=i | (0x01 if s16 else 0),
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
    if not isinstance(channel, CardSCP02 | CardSCP03) or kvn is None:
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


# ------------------------------------------------------------------ SCP11 handshake (Amd F §7.5-§7.7)


def scp11_handshake(card: Card, raw: bytes, cmd: CommandAPDU) -> bytes:
    """PERFORM SECURITY OPERATION, MUTUAL AUTHENTICATE or INTERNAL AUTHENTICATE on an SD that
    holds SCP11 keys. Any of them ends the current session; a verified OCE chain lives until
    the next authenticate of this selection. Every refused handshake counts against the SD's
    SCP11 retry limit; at the limit the SD refuses to authenticate (6983)."""
    info = card._sds[card.selected]
    record = info["scp11"]
    pending = card.scp11_pending
    if pending is None or card.scp11_pending_sd != card.selected:
        pending = scp11.card_channel(info, card._today, card._random)
        card.scp11_pending, card.scp11_pending_sd = pending, card.selected
    card._end_session()
    authenticate = cmd.ins != Ins.PERFORM_SECURITY_OPERATION
    if record["failures"] >= card.state["auth_limit"]:
        pending.reset()
        return _sw(SW.AUTHENTICATION_METHOD_BLOCKED)
    out = pending.process(raw)
    if out[-2:] == b"\x90\x00":
        if authenticate:
            card.channel, card.channel_kvn = pending, cmd.p1
            card.scp11_pending = None  # the next handshake starts from the stored records
            if record["failures"]:
                record["failures"] = 0
                card._changed()
        return out
    record["failures"] += 1
    card._changed()
    return out
