"""The state file: the card's non-volatile memory, written atomically.

``save`` writes a temporary file in the same directory (mode 0600: it holds the card's keys),
fsyncs it, ``os.replace``s it over the state file and fsyncs the directory, so a process killed
at any instant leaves either the old or the new state — never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from cardsim.state import State, check_state

MODE = 0o600


def load(path: str | os.PathLike[str]) -> State:
    p = Path(path)
    return check_state(json.loads(p.read_text(encoding="utf-8")))


def save(path: str | os.PathLike[str], state: State) -> None:
    p = Path(path)
    data = json.dumps(state, indent=1, sort_keys=False).encode("utf-8")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, MODE)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
