"""The relay reads a well-formed body without building a serializer (issue 15), and answers any
other body exactly as the declared serializers do: same values, same errors."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from updates.apis import ExchangeSerializer, OpenSessionSerializer, _exchange_payload, _open_payload

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["batch", "apdu", " batch", "9000", " 9000 ", "", "  ", "7"]),
)
responses = st.one_of(
    scalars, st.lists(scalars, max_size=4), st.lists(st.sampled_from(["9000", "6A82", "00"]), max_size=3)
)
bodies = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.fixed_dictionaries({}, optional={"exchange": scalars, "responses": responses, "mode": scalars, "x": scalars}),
)


def outcome(read: Any, body: Any) -> tuple[str, Any]:
    try:
        return "ok", read(body)
    except ValidationError as exc:
        return "error", exc.detail


def declared(serializer_class: Any, fields: tuple[str, ...]) -> Any:
    def read(body: Any) -> Any:
        payload = serializer_class(data=body)
        payload.is_valid(raise_exception=True)
        values = tuple(payload.validated_data[f] for f in fields)
        return values[0] if len(values) == 1 else values

    return read


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_an_exchange_body_reads_as_its_serializer_reads_it(body: Any) -> None:
    expected = outcome(declared(ExchangeSerializer, ("exchange", "responses")), body)
    assert outcome(_exchange_payload, body) == expected


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_an_open_body_reads_as_its_serializer_reads_it(body: Any) -> None:
    expected = outcome(declared(OpenSessionSerializer, ("mode",)), body)
    assert outcome(_open_payload, body) == expected


def test_the_well_formed_bodies_the_agent_sends() -> None:
    assert _exchange_payload({"exchange": 2, "responses": ["9000", " 6A82"]}) == (2, ["9000", "6A82"])
    assert _open_payload({}) == "batch" and _open_payload({"mode": "apdu"}) == "apdu"
