"""The service's own append-only journal: one JSON line per event, hash-chained.

Each entry carries ``seq``, ``prev`` (the previous entry's hash, 64 zeros for the first) and
``hash`` = SHA-256(prev || canonical JSON of the entry without ``hash``). Every append is
flushed and fsync'ed before the caller gets its answer.
"""

from __future__ import annotations

import datetime as dt
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
        return self._head

    def append(self, **fields: Any) -> dict[str, Any]:
        with self._lock:
            entry: dict[str, Any] = {
                "seq": self._head.size + 1,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                **fields,
                "prev": self._head.hash,
            }
            entry["hash"] = entry_hash(self._head.hash, entry)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
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
            out = []
            for line in self.path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    if entry["seq"] > after:
                        out.append(entry)
                        if len(out) >= limit:
                            break
            return out
