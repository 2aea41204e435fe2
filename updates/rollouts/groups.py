"""Group specifications of a rollout: cumulative bounds, percentages or card counts, the last 100%."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ecard.errors import ServiceError

MAX_GROUPS = 20

_PERCENT = re.compile(r"^\s*([0-9]{1,3}(?:\.[0-9]{1,2})?)\s*%\s*$")
# A card count: ASCII digits only ("²".isdigit() is true, and int("²") raises ValueError: a 500).
_COUNT = re.compile(r"^\s*([0-9]{1,9})\s*$")


@dataclass(frozen=True)
class Bound:
    """A cumulative group bound: ``percent`` in hundredths of a percent, or ``count`` cards."""

    text: str
    basis_points: int | None = None
    count: int | None = None


def parse_groups(spec: Any) -> list[Bound]:
    """``["1%", "10%", "100%"]`` or counts (``[5, 50, "100%"]``); cumulative, the last must be 100%."""
    if not isinstance(spec, list | tuple) or not spec:
        raise ServiceError('groups must be a non-empty list such as ["10%", "50%", "100%"]', field="groups")
    if len(spec) > MAX_GROUPS:
        raise ServiceError(f"at most {MAX_GROUPS} groups", field="groups")
    bounds: list[Bound] = []
    last_bp = last_count = 0
    for item in spec:
        if isinstance(item, bool):
            raise ServiceError(f"{item!r} is not a percentage or a card count", field="groups")
        if isinstance(item, int):
            count: int | None = item
        else:
            count_text = _COUNT.match(item) if isinstance(item, str) else None
            count = int(count_text.group(1)) if count_text is not None else None
        if count is not None:
            if count >= 10**9:
                raise ServiceError("a card count is below 1,000,000,000", field="groups")
            if count < 1 or count <= last_count:
                raise ServiceError(
                    "card counts must be positive and increasing (groups are cumulative)", field="groups"
                )
            bounds.append(Bound(text=str(count), count=count))
            last_count = count
            continue
        match = _PERCENT.match(item) if isinstance(item, str) else None
        if match is None:
            raise ServiceError(f'{item!r} is not a percentage ("10%") or a card count', field="groups")
        basis_points = round(float(match.group(1)) * 100)
        if not 0 < basis_points <= 10_000 or basis_points <= last_bp:
            raise ServiceError(
                "percentages must be above 0, at most 100 and increasing (groups are cumulative)", field="groups"
            )
        bounds.append(Bound(text=f"{match.group(1)}%", basis_points=basis_points))
        last_bp = basis_points
    if bounds[-1].basis_points != 10_000:
        raise ServiceError("the last group must be 100% so that every target card is in a group", field="groups")
    return bounds
