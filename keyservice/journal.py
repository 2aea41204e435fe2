"""The service's own append-only journal: one JSON line per event, hash-chained.

Each entry carries ``seq``, ``prev`` (the previous entry's hash, 64 zeros for the first) and
``hash`` = SHA-256(prev || canonical JSON of the entry without ``hash``). Every append is
flushed and fsync'ed before the caller gets its answer.

Two processes append to one journal: the service, and the bank's command line
(``sign-release``) while the service runs. Each append holds an exclusive ``flock`` on the file
and chains to the last line actually in it, so neither writes over the other's head.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(prev: str, entry: dict[str, Any]) -> str:
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(prev.encode() + canonical(body)).hexdigest()


class JournalCorrupt(Exception):
    """The journal's chain does not verify (a line edited, removed or reordered)."""


@dataclass(frozen=True)
class Head:
    size: int
    hash: str


def verify_lines(lines: list[str]) -> Head:
    prev = GENESIS
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise JournalCorrupt(f"line {number}: not JSON") from None
        if entry.get("seq") != number:
            raise JournalCorrupt(f"line {number}: seq {entry.get('seq')!r} (a line removed or moved)")
        if entry.get("prev") != prev:
            raise JournalCorrupt(f"line {number}: prev does not name the previous entry")
        if entry.get("hash") != entry_hash(prev, entry):
            raise JournalCorrupt(f"line {number}: hash does not match the entry (edited)")
        prev = entry["hash"]
    return Head(len(lines), prev)


def verify_file(path: Path) -> Head:
    if not path.exists():
        return Head(0, GENESIS)
    return verify_lines([line for line in path.read_text().splitlines() if line.strip()])


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._head = verify_file(path)

    @property
    def head(self) -> Head:
        """The head as of this process's last append or read (another process may have appended)."""
        return self._head

    def refresh(self) -> Head:
        """The head of the file as it is now (another process may have appended)."""
        with self._lock:
            if self.path.exists():
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    self._head = _file_head(fd)
                finally:
                    os.close(fd)
            return self._head

    def append(self, **fields: Any) -> dict[str, Any]:
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
                head = _file_head(fd)
                entry: dict[str, Any] = {
                    "seq": head.size + 1,
                    "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    **fields,
                    "prev": head.hash,
                }
                entry["hash"] = entry_hash(head.hash, entry)
                os.write(fd, canonical(entry) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._head = Head(entry["seq"], entry["hash"])
            return entry

    def entries(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            if not self.path.exists():
                return []
            with self.path.open("rb") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_SH)  # no half-written line from another process
                text = file.read().decode()
            out = []
            for line in text.splitlines():
                if line.strip():
                    entry = json.loads(line)
                    if entry["seq"] > after:
                        out.append(entry)
                        if len(out) >= limit:
                            break
            return out


def _file_head(fd: int) -> Head:
    """``seq`` and ``hash`` of the last line of the open journal ``fd`` (read backwards from the
    end: the whole file is verified at start and by ``journal verify``, not on every append)."""
    end = os.fstat(fd).st_size
    tail = b""
    position = end
    while position > 0:
        step = min(8192, position)
        position -= step
        tail = os.pread(fd, step, position) + tail
        lines = [line for line in tail.split(b"\n") if line.strip()]
        if len(lines) > 1 or (lines and position == 0):
            last = json.loads(lines[-1])
            return Head(int(last["seq"]), str(last["hash"]))
    return Head(0, GENESIS)
