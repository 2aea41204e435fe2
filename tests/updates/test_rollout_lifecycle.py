"""The rollout lifecycle table (updates.rollouts.lifecycle), walked exhaustively: every state x
action pair in the table is accepted with exactly its listed targets, every other pair is refused
with a 409-class ServiceError naming the state, and no state write bypasses the table."""

from __future__ import annotations

import itertools

import pytest

from ecard.errors import ServiceError
from updates.rollout_models import Rollout
from updates.rollouts import lifecycle
from updates.rollouts.lifecycle import TRANSITIONS, Action

State = Rollout.State
ALL_PAIRS = list(itertools.product(State, Action))
ALLOWED = [pair for pair in ALL_PAIRS if pair in TRANSITIONS]
REFUSED = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


def _unsaved(state: State) -> Rollout:
    return Rollout(state=state)


def test_table_is_the_documented_lifecycle() -> None:
    expected = {
        (State.AWAITING_APPROVAL, Action.APPROVE): {State.READY},
        (State.READY, Action.START): {State.SCHEDULED, State.RUNNING},
        (State.SCHEDULED, Action.BEGIN): {State.RUNNING},
        (State.SCHEDULED, Action.PAUSE): {State.PAUSED},
        (State.RUNNING, Action.PAUSE): {State.PAUSED},
        (State.PAUSED, Action.RESUME): {State.RUNNING, State.SCHEDULED},
        (State.RUNNING, Action.COMPLETE): {State.COMPLETED},
        **{(state, Action.CANCEL): {State.CANCELLED} for state in Rollout.OPEN_STATES},
    }
    assert {pair: set(targets) for pair, targets in TRANSITIONS.items()} == expected


def test_terminal_states_accept_no_action() -> None:
    for state, action in itertools.product((State.COMPLETED, State.CANCELLED), Action):
        assert (state, action) not in TRANSITIONS


@pytest.mark.parametrize(("state", "action"), ALLOWED, ids=[f"{s.value}-{a.value}" for s, a in ALLOWED])
def test_every_allowed_transition_is_accepted(state: State, action: Action) -> None:
    targets = lifecycle.require(state, action)
    assert targets == TRANSITIONS[(state, action)]
    for target in targets:
        rollout = _unsaved(state)
        lifecycle.move(rollout, action, target)
        assert rollout.state == target
    for other in set(State) - targets:
        rollout = _unsaved(state)
        with pytest.raises(AssertionError):
            lifecycle.move(rollout, action, other)
        assert rollout.state == state


@pytest.mark.parametrize(("state", "action"), REFUSED, ids=[f"{s.value}-{a.value}" for s, a in REFUSED])
def test_every_other_pair_is_refused_with_a_clear_error(state: State, action: Action) -> None:
    with pytest.raises(ServiceError) as refused:
        lifecycle.require(state, action)
    assert refused.value.code == "state"
    message = str(refused.value)
    if (state, action) == (State.AWAITING_APPROVAL, Action.START):
        assert message == "the rollout needs the approval of a second bank user first"
    else:
        assert message.startswith(f"the rollout is {state.value}")
    for target in State:
        rollout = _unsaved(state)
        with pytest.raises(ServiceError):
            lifecycle.move(rollout, action, target)
        assert rollout.state == state


def test_refusal_messages_are_those_the_api_has_always_returned() -> None:
    assert lifecycle.refusal(State.READY, Action.APPROVE) == "the rollout is ready, not awaiting approval"
    assert lifecycle.refusal(State.RUNNING, Action.RESUME) == "the rollout is running, not paused"
    assert lifecycle.refusal(State.COMPLETED, Action.CANCEL) == "the rollout is completed"
    assert lifecycle.refusal(State.PAUSED, Action.START) == "the rollout is paused"


def test_no_state_write_bypasses_the_table() -> None:
    import inspect
    import re

    import updates.rollouts.actions as actions
    import updates.rollouts.progress as progress

    for module in (actions, progress):
        source = inspect.getsource(module)
        assert not re.search(r"rollout\.state\s*=[^=]", source), f"{module.__name__} writes the state directly"
