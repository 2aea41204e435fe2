"""Staged rollouts (hawkBit / AWS IoT Jobs style): plan, approve, start, advance, pause, resume, cancel.

Planning is set-based: one ``INSERT ... SELECT`` writes every target of a rollout, with a window
function (``ROW_NUMBER() OVER (ORDER BY <hash of the card>)``) spreading the cards over the
cumulative groups in a pseudo-random but reproducible order. Activating a group (or retrying
failed cards) creates the card jobs with one ``INSERT ... SELECT`` too, and links the targets to
them in the same statement (PostgreSQL) or the next one (SQLite). No per-card Python loop.

Per-card results come from the OTA engine's ``job_state_changed`` signal (connected in
``updates.rollout_models``), inside the exchange's transaction: the target's status and its
group's counters change with the job. Every path locks the rollout row first, so the signal
handler, the API actions and the Celery beat task never deadlock one another.

Lifecycle: awaiting_approval → ready → (scheduled →) running ⇄ paused → completed | cancelled,
as a table in :mod:`~updates.rollouts.lifecycle`.

The package is split by concern; this module re-exports every name callers use:

* :mod:`~updates.rollouts.groups` — parsing the group specification;
* :mod:`~updates.rollouts.dispatch` — the set-based SQL that plans targets and creates card jobs;
* :mod:`~updates.rollouts.lifecycle` — the transition table (state × action → new state, refusals);
* :mod:`~updates.rollouts.actions` — operator actions (create, approve, start, pause, resume, cancel);
* :mod:`~updates.rollouts.progress` — card results, evaluation, the beat task's tick.
"""

from __future__ import annotations

from updates.rollouts.actions import (
    approve_rollout,
    cancel_rollout,
    create_install_rollout,
    create_rollout,
    create_rotation_rollout,
    pause_rollout,
    pause_rollouts_of_release,
    resume_rollout,
    start_rollout,
)
from updates.rollouts.dispatch import (
    DISPATCH_CHUNK,
    HASH_MODULUS,
    HASH_MULTIPLIER,
    INLINE_ACTIVATION_MAX,
    MAX_LISTED_CARDS,
    email_dispatched_work,
    plan_targets,
)
from updates.rollouts.groups import MAX_GROUPS, Bound, parse_groups
from updates.rollouts.lifecycle import TRANSITIONS, Action
from updates.rollouts.progress import evaluate_rollout, record_card_result, tick

__all__ = [
    "DISPATCH_CHUNK",
    "HASH_MODULUS",
    "HASH_MULTIPLIER",
    "INLINE_ACTIVATION_MAX",
    "MAX_GROUPS",
    "MAX_LISTED_CARDS",
    "TRANSITIONS",
    "Action",
    "Bound",
    "approve_rollout",
    "cancel_rollout",
    "create_install_rollout",
    "create_rollout",
    "create_rotation_rollout",
    "email_dispatched_work",
    "evaluate_rollout",
    "parse_groups",
    "pause_rollout",
    "pause_rollouts_of_release",
    "plan_targets",
    "record_card_result",
    "resume_rollout",
    "start_rollout",
    "tick",
]
