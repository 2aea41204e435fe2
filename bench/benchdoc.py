"""What every benchmark needs for its report: a note of the machine, and replacing its own
section of docs/benchmarks.md (each benchmark owns one "## ..." section)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nMeasured numbers of the platform's hot paths; each part owns one section.\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def memory_gib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) // 1024 // 1024
    except OSError:
        pass
    return None


def machine_note(*extra: str, load: bool = True) -> str:
    """``nproc N, CPU …[, extra…], Python X, <UTC time>[, load average …]``."""
    parts = [f"nproc {os.cpu_count()}", f"CPU {cpu_model()}", *extra, f"Python {platform.python_version()}"]
    parts.append(_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    if load:
        parts.append("load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    return ", ".join(parts)


def write_section(section: str, text: str, doc: Path = DOC) -> None:
    """Replace (or append) ``section`` — a ``## Title`` line — with ``text``, leaving the others."""
    body = f"{section}\n\n{text.rstrip()}\n"
    current = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        current = pattern.sub(lambda _m: body + "\n", current, count=1).rstrip() + "\n"
    else:
        current = current.rstrip() + "\n\n" + body
    doc.write_text(current)


class BenchmarkInvalid(RuntimeError):
    """What a benchmark measured did not do its work, so its numbers mean nothing."""


def require(condition: object, what: str) -> None:
    """Refuse to report numbers of a run that failed (an assert would vanish under ``python -O``)."""
    if not condition:
        raise BenchmarkInvalid(what)
