"""The card's undo copy (``cardsim.card._snapshot``): taken before every command, restored when the
command fails, so it must be equal to the state and share no mutable part with it."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cardsim.card import Card, _snapshot
from cardsim.state import new_state

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=30,
)


def _containers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value, *(c for item in value.values() for c in _containers(item))]
    if isinstance(value, list):
        return [value, *(c for item in value for c in _containers(item))]
    return []


@given(json_values)
def test_snapshot_is_equal_and_shares_no_container(value: Any) -> None:
    copy = _snapshot(value)
    assert copy == value
    originals = {id(c) for c in _containers(value)}
    assert not originals & {id(c) for c in _containers(copy)}


def test_a_card_state_snapshot_survives_mutation_of_the_original() -> None:
    state = new_state()
    copy = _snapshot(state)
    state["apps"].clear()
    next(iter(state["sds"].values()))["keys"].clear()
    assert copy["apps"] and next(iter(copy["sds"].values()))["keys"]


def test_a_failed_command_leaves_the_state_as_it_was() -> None:
    card = Card(new_state())
    before = _snapshot(card.state)

    def boom(_capdu: bytes) -> bytes:
        card.state["apps"].clear()  # a handler that changed the state and then failed
        raise RuntimeError("handler bug")

    card._process = boom  # type: ignore[method-assign]
    response = card.transmit(bytes.fromhex("80CA006600"))
    assert response[-2:] == bytes.fromhex("6F00") and card.state == before
