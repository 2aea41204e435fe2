"""Server-rendered SVG bar charts (no script): geometry computed here, drawn by a template.

Each bar has its label on the line above it, so the chart stays readable when a phone scales it
down; the numbers are also in the SVG's description for screen readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABEL_HEIGHT = 20
BAR_HEIGHT = 22
GAP = 12
PLOT_WIDTH = 330
VALUE_WIDTH = 70
ROW = LABEL_HEIGHT + BAR_HEIGHT + GAP


@dataclass(frozen=True)
class ChartRow:
    label: str
    value: int
    label_y: int
    bar_y: int
    width: int
    value_x: int
    value_y: int


def bar_chart(items: list[Any], *, total: int | None = None) -> dict[str, Any]:
    """Horizontal bars for ``(label, value)`` pairs (or objects with ``label``/``value``), scaled to the
    largest value or to ``total``."""
    pairs = [(i.label, i.value) if hasattr(i, "label") else (i[0], i[1]) for i in items]
    top = max([total or 0, *[v for _, v in pairs], 1])
    rows = []
    for n, (label, value) in enumerate(pairs):
        y = n * ROW
        width = round(PLOT_WIDTH * value / top)
        rows.append(
            ChartRow(
                label=label,
                value=value,
                label_y=y + LABEL_HEIGHT - 5,
                bar_y=y + LABEL_HEIGHT,
                width=max(width, 2 if value else 0),
                value_x=width + 8,
                value_y=y + LABEL_HEIGHT + BAR_HEIGHT - 6,
            )
        )
    return {
        "rows": rows,
        "height": max(len(rows) * ROW - GAP, 1),
        "width": PLOT_WIDTH + VALUE_WIDTH,
        "bar_height": BAR_HEIGHT,
    }


SEGMENTS = (("succeeded", "ok"), ("failed", "bad"), ("running", "run"), ("pending", "wait"), ("cancelled", "off"))


@dataclass(frozen=True)
class Segment:
    name: str
    css: str
    value: int
    x: int
    width: int


@dataclass(frozen=True)
class StackRow:
    label: str
    summary: str
    label_y: int
    bar_y: int
    segments: list[Segment]


def stacked_chart(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """One bar per rollout group, split into succeeded / failed / running / pending / cancelled,
    each group's bar as long as its share of the largest group."""
    top = max([g["total"] for g in groups] + [1])
    rows = []
    for n, g in enumerate(groups):
        y = n * ROW
        x = 0
        segments = []
        for name, css in SEGMENTS:
            value = g.get(name, 0)
            width = round(PLOT_WIDTH * value / top)
            if value:
                segments.append(Segment(name=name, css=css, value=value, x=x, width=max(width, 2)))
            x += width
        cards = "card" if g["total"] == 1 else "cards"
        summary = ", ".join(f"{g.get(name, 0)} {name}" for name, _ in SEGMENTS if g.get(name, 0))
        rows.append(
            StackRow(
                label=f"Group {g['index']} (up to {g['bound']}): {g['state']}, {g['total']} {cards}",
                summary=summary or "no cards",
                label_y=y + LABEL_HEIGHT - 5,
                bar_y=y + LABEL_HEIGHT,
                segments=segments,
            )
        )
    return {
        "rows": rows,
        "height": max(len(rows) * ROW - GAP, 1),
        "width": PLOT_WIDTH + VALUE_WIDTH,
        "bar_height": BAR_HEIGHT,
        "plot_width": PLOT_WIDTH,
    }


# -- lines over days (installed versions over time) ------------------------------------------

LINE_LEFT = 44  # room for the y-axis labels
LINE_PLOT_HEIGHT = 150
LINE_BOTTOM = 26  # room for the x-axis labels
LINE_TOP = 10
LINE_CLASSES = 6  # css classes line-0 … line-5, then they repeat


@dataclass(frozen=True)
class Line:
    label: str
    css: str
    points: str
    last: int
    peak: int


def line_chart(days: list[Any], series: dict[str, list[int]], *, label: str = "v{}") -> dict[str, Any]:
    """One polyline per series (a package's versions) over ``days``, on a shared y scale from 0 to
    the largest value; the x axis names the first and the last day."""
    top = max([1, *[max(values, default=0) for values in series.values()]])
    n = max(len(days), 1)
    step = PLOT_WIDTH / (n - 1) if n > 1 else 0.0

    def y(value: int) -> int:
        return LINE_TOP + round(LINE_PLOT_HEIGHT * (1 - value / top))

    lines = []
    for i, (name, values) in enumerate(series.items()):
        points = " ".join(f"{LINE_LEFT + round(k * step)},{y(v)}" for k, v in enumerate(values))
        lines.append(
            Line(
                label=label.format(name),
                css=f"line-{i % LINE_CLASSES}",
                points=points,
                last=values[-1] if values else 0,
                peak=max(values, default=0),
            )
        )
    bottom = LINE_TOP + LINE_PLOT_HEIGHT
    return {
        "lines": lines,
        "width": LINE_LEFT + PLOT_WIDTH + 10,
        "height": bottom + LINE_BOTTOM,
        "left": LINE_LEFT,
        "right": LINE_LEFT + PLOT_WIDTH,
        "top": LINE_TOP,
        "bottom": bottom,
        "top_value": top,
        "label_y": bottom + 18,
        "first_day": days[0] if days else None,
        "last_day": days[-1] if days else None,
        "rows": [{"day": day, "values": [values[k] for values in series.values()]} for k, day in enumerate(days)],
        "columns": [label.format(name) for name in series],
    }
