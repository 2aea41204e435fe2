"""Server-rendered SVG bar charts (no script): geometry computed here, drawn by a template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BAR_HEIGHT = 28
GAP = 10
LABEL_WIDTH = 240
PLOT_WIDTH = 360
VALUE_WIDTH = 60


@dataclass(frozen=True)
class ChartRow:
    label: str
    value: int
    y: int
    width: int
    text_y: int
    value_x: int
    extra: str = ""


def bar_chart(items: list[tuple[str, int]] | list[Any], *, total: int | None = None) -> dict[str, Any]:
    """Horizontal bars scaled to the largest value (or ``total``)."""
    pairs = [(i.label, i.value) if hasattr(i, "label") else (i[0], i[1]) for i in items]
    top = max([total or 0, *[v for _, v in pairs], 1])
    rows = []
    for n, (label, value) in enumerate(pairs):
        y = n * (BAR_HEIGHT + GAP)
        width = round(PLOT_WIDTH * value / top)
        rows.append(
            ChartRow(
                label=label,
                value=value,
                y=y,
                width=width,
                text_y=y + BAR_HEIGHT // 2 + 5,
                value_x=LABEL_WIDTH + width + 6,
            )
        )
    height = max(len(rows) * (BAR_HEIGHT + GAP) - GAP, BAR_HEIGHT)
    return {
        "rows": rows,
        "height": height,
        "width": LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH,
        "label_width": LABEL_WIDTH,
        "bar_height": BAR_HEIGHT,
        "plot_width": PLOT_WIDTH,
    }
