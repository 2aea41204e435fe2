"""The rollout lifecycle as data: which action moves a rollout from which state to which, and the
refusal message of every other (state, action) pair (docs/rollouts.md, "Lifecycle").

    awaiting_approval → ready → (scheduled →) running ⇄ paused → completed | cancelled

Every write of ``Rollout.state`` goes through :func:`move`, so the table is the whole lifecycle.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ecard.errors import ServiceError
from updates.rollout_models import Rollout

State = Rollout.State


class Action(enum.StrEnum):
    APPROVE = "approve"  # a second bank user (four eyes)
    START = "start"  # an operator; scheduled if the start time is still ahead
    BEGIN = "begin"  # the start time of a scheduled rollout came (evaluation)
    PAUSE = "pause"  # an operator, a revoked release, or a threshold (evaluation)
    RESUME = "resume"  # an operator; back to scheduled if it never began
    CANCEL = "cancel"  # an operator, from any open state
    COMPLETE = "complete"  # every group done (evaluation)


# (state, action) → the states the action may lead to. A pair not listed is refused.
TRANSITIONS: Mapping[tuple[State, Action], frozenset[State]] = {
    (State.AWAITING_APPROVAL, Action.APPROVE): frozenset({State.READY}),
    (State.READY, Action.START): frozenset({State.SCHEDULED, State.RUNNING}),
    (State.SCHEDULED, Action.BEGIN): frozenset({State.RUNNING}),
    (State.SCHEDULED, Action.PAUSE): frozenset({State.PAUSED}),
    (State.RUNNING, Action.PAUSE): frozenset({State.PAUSED}),
    (State.PAUSED, Action.RESUME): frozenset({State.RUNNING, State.SCHEDULED}),
    (State.RUNNING, Action.COMPLETE): frozenset({State.COMPLETED}),
    **{(state, Action.CANCEL): frozenset({State.CANCELLED}) for state in Rollout.OPEN_STATES},
}

# Refusal messages: a (state, action) entry wins over the action's default; "{state}" is filled in.
_REFUSAL_DEFAULT = "the rollout is {state}"
REFUSALS: Mapping[tuple[State | None, Action], str] = {
    (None, Action.APPROVE): "the rollout is {state}, not awaiting approval",
    (State.AWAITING_APPROVAL, Action.START): "the rollout needs the approval of a second bank user first",
    (None, Action.RESUME): "the rollout is {state}, not paused",
}


def refusal(state: State, action: Action) -> str:
    """Why ``action`` is refused in ``state`` (meaningful only for pairs not in :data:`TRANSITIONS`)."""
    template = REFUSALS.get((state, action)) or REFUSALS.get((None, action)) or _REFUSAL_DEFAULT
    return template.format(state=state.value)


def require(state: str, action: Action) -> frozenset[State]:
    """The states ``action`` may lead to from ``state``; :class:`ServiceError` (409, code "state") if none."""
    allowed = TRANSITIONS.get((State(state), action))
    if allowed is None:
        raise ServiceError(refusal(State(state), action), code="state")
    return allowed


def move(rollout: Rollout, action: Action, new_state: State) -> None:
    """Set ``rollout.state`` (not saved) after checking the table; a pair the table does not allow
    is a refusal, a target it does not list is a bug."""
    allowed = require(rollout.state, action)
    if new_state not in allowed:
        raise AssertionError(f"{action} from {rollout.state} leads to {sorted(allowed)}, not {new_state}")
    rollout.state = new_state
