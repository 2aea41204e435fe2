"""The phases of a card session and the one table of transitions between them (DESIGN.md §6).

A card session moves through phases, one relay exchange each:

``identify``  SELECT ISD, GET DATA CPLC and CIN (plain: no secure channel yet), and, when the
              platform can presume the card, the first stage's SELECT and INITIALIZE UPDATE
``open``      SELECT the stage's security domain, INITIALIZE UPDATE with a key set
``status``    EXTERNAL AUTHENTICATE and GET STATUS (the card registry), and on a job's first
              attempt the script computed from the registry the platform expects, then GET
              STATUS again to verify
``script``    the stage's secured script computed from the registry the card reported, then GET
              STATUS again to verify
``done``      nothing more to send

Every change of phase names an :class:`Event`; :func:`next_phase` looks it up in
:data:`TRANSITIONS` and refuses any pair the table does not hold. Such a refusal is the engine's
own bug (:class:`~gp.errors.LocalProtocolError`), never the card's or the relay's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from gp.errors import LocalProtocolError


class Phase(enum.StrEnum):
    """Where a card session stands between two exchanges (stored as its value)."""

    IDENTIFY = "identify"
    OPEN = "open"
    STATUS = "status"
    SCRIPT = "script"
    DONE = "done"


class Event(enum.StrEnum):
    """Why the engine changes phase."""

    OPEN_STAGE = "open-stage"  # SELECT + INITIALIZE UPDATE of a stage's SD sent (or carried by identification)
    NEXT_KEY = "next-key"  # INITIALIZE UPDATE answered 6A88 (unauthenticated): the next key set is tried
    KEY_AGREEMENT = "key-agreement"  # SCP11b: INTERNAL AUTHENTICATE sent; its receipt proves the card (Amd F §3.1)
    AUTHENTICATE = "authenticate"  # EXTERNAL AUTHENTICATE + GET STATUS [+ expected-registry script + GET STATUS]
    SCRIPT_ANSWERED = "script-answered"  # the expected-registry script's answers are judged as a script's
    CONTINUE_LISTING = "continue-listing"  # GET STATUS answered 6310: the next occurrences
    SCRIPT = "script"  # a script (computed from the card's R-MAC'd registry, a probe, a second chance) sent
    FINISH = "finish"  # no job left, or the session stops here (a job waits for the next presentation)


_T = Phase
_E = Event

TRANSITIONS: Mapping[tuple[Phase, Event], Phase] = MappingProxyType(
    {
        # identification: the first stage opens, its opening rode along, or there is nothing to do
        (_T.IDENTIFY, _E.OPEN_STAGE): _T.OPEN,
        (_T.IDENTIFY, _E.FINISH): _T.DONE,
        # open: the next key set, the channel authenticates, or the stage cannot open (job fails/waits)
        (_T.OPEN, _E.NEXT_KEY): _T.OPEN,
        (_T.OPEN, _E.KEY_AGREEMENT): _T.OPEN,
        (_T.OPEN, _E.AUTHENTICATE): _T.STATUS,
        (_T.OPEN, _E.OPEN_STAGE): _T.OPEN,
        (_T.OPEN, _E.FINISH): _T.DONE,
        # status: the listing continues, the script goes out, the stage was already done (next stage)
        (_T.STATUS, _E.CONTINUE_LISTING): _T.STATUS,
        (_T.STATUS, _E.SCRIPT): _T.SCRIPT,
        (_T.STATUS, _E.SCRIPT_ANSWERED): _T.SCRIPT,
        (_T.STATUS, _E.OPEN_STAGE): _T.OPEN,
        (_T.STATUS, _E.FINISH): _T.DONE,
        # script: the verifying listing continues, a probe or second chance, next stage, reopen, end
        (_T.SCRIPT, _E.CONTINUE_LISTING): _T.SCRIPT,
        (_T.SCRIPT, _E.SCRIPT): _T.SCRIPT,
        (_T.SCRIPT, _E.OPEN_STAGE): _T.OPEN,
        (_T.SCRIPT, _E.FINISH): _T.DONE,
    }
)


def next_phase(phase: Phase | str, event: Event) -> Phase:
    """The phase ``event`` leads to from ``phase``; LocalProtocolError if the table has no such move."""
    try:
        current = Phase(phase)
    except ValueError:
        raise LocalProtocolError(f"no such phase {phase!r}") from None
    following = TRANSITIONS.get((current, event))
    if following is None:
        raise LocalProtocolError(f"no transition from {current.value!r} on {event.value!r}")
    return following


def expects_answers(phase: Phase | str) -> bool:
    """Whether an exchange is expected in ``phase`` (every phase but ``done``)."""
    try:
        return Phase(phase) is not Phase.DONE
    except ValueError:
        return False
