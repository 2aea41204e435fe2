"""The engine's phase table, without a database: every transition it holds, and every move it
refuses (an engine bug: LocalProtocolError, never the card's or the relay's fault)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from gp.errors import LocalProtocolError
from updates.engine.phases import TRANSITIONS, Event, Phase, expects_answers, next_phase

# What each phase may lead to, written out once more by hand: a change to the table must change this.
EXPECTED = {
    (Phase.IDENTIFY, Event.OPEN_STAGE): Phase.OPEN,
    (Phase.IDENTIFY, Event.FINISH): Phase.DONE,
    (Phase.OPEN, Event.NEXT_KEY): Phase.OPEN,
    (Phase.OPEN, Event.KEY_AGREEMENT): Phase.OPEN,
    (Phase.OPEN, Event.AUTHENTICATE): Phase.STATUS,
    (Phase.OPEN, Event.OPEN_STAGE): Phase.OPEN,
    (Phase.OPEN, Event.FINISH): Phase.DONE,
    (Phase.STATUS, Event.CONTINUE_LISTING): Phase.STATUS,
    (Phase.STATUS, Event.SCRIPT): Phase.SCRIPT,
    (Phase.STATUS, Event.SCRIPT_ANSWERED): Phase.SCRIPT,
    (Phase.STATUS, Event.OPEN_STAGE): Phase.OPEN,
    (Phase.STATUS, Event.FINISH): Phase.DONE,
    (Phase.SCRIPT, Event.CONTINUE_LISTING): Phase.SCRIPT,
    (Phase.SCRIPT, Event.SCRIPT): Phase.SCRIPT,
    (Phase.SCRIPT, Event.OPEN_STAGE): Phase.OPEN,
    (Phase.SCRIPT, Event.FINISH): Phase.DONE,
}


def test_the_table_is_the_one_written_out() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("move", "after"), sorted(EXPECTED.items()))
def test_every_transition(move: tuple[Phase, Event], after: Phase) -> None:
    phase, event = move
    assert next_phase(phase, event) is after
    assert next_phase(phase.value, event) is after  # as stored in CardSession.engine_state


REFUSED = sorted(set(itertools.product(Phase, Event)) - set(EXPECTED))


@pytest.mark.parametrize(("phase", "event"), REFUSED)
def test_every_other_move_is_an_engine_bug(phase: Phase, event: Event) -> None:
    with pytest.raises(LocalProtocolError, match="no transition"):
        next_phase(phase, event)


def test_nothing_leaves_done_and_authentication_only_follows_an_opening() -> None:
    assert not any(phase is Phase.DONE for phase, _ in TRANSITIONS)
    assert [phase for phase, event in TRANSITIONS if event is Event.AUTHENTICATE] == [Phase.OPEN]
    # every phase but done can end the session (a job fails or waits for the next presentation)
    assert {phase for phase, event in TRANSITIONS if event is Event.FINISH} == set(Phase) - {Phase.DONE}


@pytest.mark.parametrize("stored", ["", "closing", None, 3])
def test_an_unknown_stored_phase_is_refused(stored: object) -> None:
    with pytest.raises(LocalProtocolError, match="no such phase"):
        next_phase(stored, Event.FINISH)  # type: ignore[arg-type]  # what a corrupted state could hold
    assert not expects_answers(stored)  # type: ignore[arg-type]


def test_every_phase_but_done_expects_answers() -> None:
    assert [p for p in Phase if expects_answers(p)] == [Phase.IDENTIFY, Phase.OPEN, Phase.STATUS, Phase.SCRIPT]


def test_the_engine_package_loads_no_framework() -> None:
    code = (
        "import sys, updates.engine.phases, updates.engine.protocol;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'rest_framework', 'celery', 'audit', 'cards', 'issuers', 'ecard'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
