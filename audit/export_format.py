"""Audit entries, their canonical leaf bytes, and the JSON Lines export format.

Shared by the server (which hashes entries into the log) and the offline verifier
(``python -m audit.verify``), so both hash exactly the same bytes.  No Django here.

Leaf bytes
----------
``canonical_leaf_bytes(entry)`` is the canonical JSON of the entry object: RFC 8785 (JCS)
restricted to the value types entries use -- objects, arrays, strings, integers in
±(2**53 - 1), ``true``/``false``/``null``; no floats.  That is: UTF-8, no insignificant
whitespace, object members sorted by the UTF-16 code units of their names, strings with
only ``"`` ``\\`` and U+0000..U+001F escaped (``\\b \\t \\n \\f \\r``, otherwise
``\\u00xx`` lowercase), everything else literal.  The leaf hash is RFC 9162
SHA-256(0x00 || leaf bytes).

Entry (format 1) -- exactly these members::

    index         integer >= 0, the entry's position in the log
    time          RFC 3339 UTC, "YYYY-MM-DDTHH:MM:SS[.fraction]Z" (server writes 6 digits)
    actor         {"type": "user"|"system"|"agent", "id": string|null, "organisation": string|null}
    action        non-empty string, e.g. "card.issued"
    subject       {"type": non-empty string, "id": string}
    card          string|null   CIN of the card concerned
    organisation  string|null   slug of the organisation the event concerns (e.g. the bank)
    outcome       "success"|"failure"|"denied"|"pending"
    reason        string|null
    receipt       lowercase hex string (even length, non-empty) | null
    details       object (any JSON values above; never key material or personal data)

Export file (JSON Lines, UTF-8, one JSON value per "\\n"-terminated line)
----------------------------------------------------------------------------
Line 1, the header object::

    {"format": "ecard-audit-export/1",
     "origin": <log origin>,
     "verifier_key": <vkey of the log, convenience only>,
     "checkpoint": <signed checkpoint note covering exactly the entries below>,
     "checkpoints": [<earlier signed checkpoints, ascending size>]          (optional)
     "consistency_proofs": [{"from_size": m, "proof": [<base64 hash>...]}]  (optional)
     "exported_at": <RFC 3339 UTC>,                                          (optional)
     "from": m,                                                              (optional, range export)
     "frontier": [<base64 hash>...]}                                         (with "from" > 0)

Then one line per entry, indices 0..n-1 in order (``from``..n-1 in a range export, whose
``frontier`` holds the perfect subtrees covering entries 0..from-1: the verifier extends them with
the exported entries and must reach the signed root)::

    {"index": i, "entry": {<entry>}, "leaf_hash": <hex, as stored by the server>}

``leaf_hash`` is optional and only a hint (it lets the verifier name the entry that was
edited in the database); the signed root is what is trusted.  Duplicate object keys,
floats, NaN and Infinity are rejected everywhere.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _encode_basestring  # json.dumps(ensure_ascii=False), one string
from typing import IO, Any, Protocol

from audit.merkle import leaf_hash as _rfc9162_leaf_hash

__all__ = [
    "ACTOR_TYPES",
    "FORMAT",
    "OUTCOMES",
    "ExportFormatError",
    "ExportHeader",
    "ExportLine",
    "ExportWriter",
    "canonical_json",
    "canonical_leaf_bytes",
    "entry_leaf_hash",
    "format_time",
    "make_entry",
    "parse_json_strict",
    "read_export",
    "validate_entry",
]

FORMAT = "ecard-audit-export/1"
ACTOR_TYPES = ("user", "system", "agent")
OUTCOMES = ("success", "failure", "denied", "pending")
MAX_SAFE_INTEGER = 2**53 - 1
ENTRY_KEYS = frozenset(
    {"index", "time", "actor", "action", "subject", "card", "organisation", "outcome", "reason", "receipt", "details"}
)
HEADER_KEYS = frozenset(
    {
        "format",
        "origin",
        "verifier_key",
        "checkpoint",
        "checkpoints",
        "consistency_proofs",
        "exported_at",
        "from",
        "frontier",
    }
)
LINE_KEYS = frozenset({"index", "entry", "leaf_hash"})
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?Z")
_HEX_RE = re.compile(r"(?:[0-9a-f]{2})+")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class ExportFormatError(ValueError):
    """An entry, a value or an export file that does not follow the format."""


# --------------------------------------------------------------------------- canonical JSON


def _encode_string(s: str, out: list[str]) -> None:
    # json.dumps with ensure_ascii=False escapes exactly what RFC 8785 escapes: '"', '\\',
    # \b \t \n \f \r short forms, other U+0000..U+001F as lowercase \u00xx; the rest literal.
    if _SURROGATE_RE.search(s):
        raise ExportFormatError("string contains a lone surrogate")
    out.append(_encode_basestring(s))


def _encode(value: Any, out: list[str], depth: int) -> None:
    if depth > 64:
        raise ExportFormatError("value is nested too deeply")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ExportFormatError(f"integer {value} is outside ±(2**53 - 1)")
        out.append(str(int(value)))
    elif isinstance(value, str):
        _encode_string(value, out)
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ExportFormatError(f"object key {key!r} is not a string")
        out.append("{")
        if all(key.isascii() for key in value):
            keys = sorted(value)  # code point order == UTF-16 code unit order for ASCII
        else:
            keys = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        for n, key in enumerate(keys):
            if n:
                out.append(",")
            _encode_string(key, out)
            out.append(":")
            _encode(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _encode(item, out, depth + 1)
        out.append("]")
    else:
        raise ExportFormatError(f"{type(value).__name__} values are not allowed (no floats, bytes, dates)")


def canonical_json(value: Any) -> bytes:
    """JCS (RFC 8785) encoding of ``value`` for the allowed types; raises ExportFormatError otherwise."""
    out: list[str] = []
    _encode(value, out, 0)
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------- entries


def format_time(value: dt.datetime) -> str:
    """The server's time format: RFC 3339 UTC with microseconds, e.g. 2026-01-02T03:04:05.000006Z."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ExportFormatError("time must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_time(value: Any) -> None:
    m = _TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ExportFormatError("time must be RFC 3339 UTC: YYYY-MM-DDTHH:MM:SS[.fraction]Z")
    try:
        year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
        dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ExportFormatError(f"time {value!r} is not a valid date/time") from exc


def _opt_str(value: Any, what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ExportFormatError(f"{what} must be a string or null")


def _exact_keys(obj: Any, keys: set[str] | frozenset[str], what: str) -> None:
    if not isinstance(obj, Mapping):
        raise ExportFormatError(f"{what} must be an object")
    got = set(obj)
    if got != set(keys):
        missing, extra = sorted(set(keys) - got), sorted(got - set(keys))
        raise ExportFormatError(f"{what} members wrong (missing {missing}, unexpected {extra})")


def validate_entry(entry: Mapping[str, Any]) -> None:
    """Check an entry against format 1; raise ExportFormatError with the first problem."""
    _check_members(entry)
    canonical_json(entry)  # every nested value must be encodable


def _check_members(entry: Mapping[str, Any]) -> None:
    _exact_keys(entry, ENTRY_KEYS, "entry")
    index = entry["index"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_SAFE_INTEGER:
        raise ExportFormatError("index must be a non-negative integer")
    _check_time(entry["time"])
    actor = entry["actor"]
    _exact_keys(actor, {"type", "id", "organisation"}, "actor")
    if actor["type"] not in ACTOR_TYPES:
        raise ExportFormatError(f"actor type must be one of {ACTOR_TYPES}")
    _opt_str(actor["id"], "actor id")
    _opt_str(actor["organisation"], "actor organisation")
    if not isinstance(entry["action"], str) or not entry["action"]:
        raise ExportFormatError("action must be a non-empty string")
    subject = entry["subject"]
    _exact_keys(subject, {"type", "id"}, "subject")
    if not isinstance(subject["type"], str) or not subject["type"]:
        raise ExportFormatError("subject type must be a non-empty string")
    if not isinstance(subject["id"], str):
        raise ExportFormatError("subject id must be a string")
    _opt_str(entry["card"], "card")
    _opt_str(entry["organisation"], "organisation")
    if entry["outcome"] not in OUTCOMES:
        raise ExportFormatError(f"outcome must be one of {OUTCOMES}")
    _opt_str(entry["reason"], "reason")
    receipt = entry["receipt"]
    if receipt is not None and not (isinstance(receipt, str) and _HEX_RE.fullmatch(receipt)):
        raise ExportFormatError("receipt must be lowercase hex (whole bytes) or null")
    if not isinstance(entry["details"], Mapping):
        raise ExportFormatError("details must be an object")


def canonical_leaf_bytes(entry: Mapping[str, Any]) -> bytes:
    """The bytes the log hashes for ``entry`` (validated, then canonical JSON)."""
    _check_members(entry)
    return canonical_json(entry)


def entry_leaf_hash(entry: Mapping[str, Any]) -> bytes:
    """RFC 9162 leaf hash of the entry's canonical bytes."""
    return _rfc9162_leaf_hash(canonical_leaf_bytes(entry))


def make_entry(
    *,
    index: int,
    time: dt.datetime | str,
    actor_type: str,
    actor_id: str | None,
    actor_organisation: str | None,
    action: str,
    subject_type: str,
    subject_id: str,
    card: str | None = None,
    organisation: str | None = None,
    outcome: str = "success",
    reason: str | None = None,
    receipt: bytes | str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build (and validate) a format-1 entry.  Empty strings for optional fields become null."""
    if isinstance(receipt, bytes | bytearray):
        receipt = bytes(receipt).hex()
    elif isinstance(receipt, str):
        receipt = receipt.lower()
    entry: dict[str, Any] = {
        "index": index,
        "time": format_time(time) if isinstance(time, dt.datetime) else time,
        "actor": {"type": actor_type, "id": actor_id or None, "organisation": actor_organisation or None},
        "action": action,
        "subject": {"type": subject_type, "id": str(subject_id)},
        "card": card or None,
        "organisation": organisation or None,
        "outcome": outcome,
        "reason": reason or None,
        "receipt": receipt or None,
        "details": dict(details or {}),
    }
    validate_entry(entry)
    return entry


# --------------------------------------------------------------------------- strict JSON parsing


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ExportFormatError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_float(text: str) -> Any:
    raise ExportFormatError(f"non-integer number {text} is not allowed")


def parse_json_strict(text: str | bytes) -> Any:
    """json.loads that rejects duplicate keys, floats, NaN and Infinity."""
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except ExportFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ExportFormatError(f"invalid JSON: {exc}") from exc


# --------------------------------------------------------------------------- export files


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ExportFormatError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ExportFormatError(f"{what} is not valid base64") from exc
    if len(raw) != 32:
        raise ExportFormatError(f"{what} is not a 32-byte hash")
    return raw


@dataclass
class ExportHeader:
    origin: str
    verifier_key: str
    checkpoint: str
    checkpoints: list[str] = field(default_factory=list)
    consistency_proofs: dict[int, list[bytes]] = field(default_factory=dict)
    exported_at: str | None = None
    start: int = 0  # "from": index of the first entry line (a range export)
    frontier: list[bytes] = field(default_factory=list)  # perfect subtrees covering entries 0..start-1

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "origin": self.origin,
            "verifier_key": self.verifier_key,
            "checkpoint": self.checkpoint,
        }
        if self.checkpoints:
            obj["checkpoints"] = list(self.checkpoints)
        if self.consistency_proofs:
            obj["consistency_proofs"] = [
                {"from_size": size, "proof": [_b64(h) for h in proof]}
                for size, proof in sorted(self.consistency_proofs.items())
            ]
        if self.exported_at is not None:
            obj["exported_at"] = self.exported_at
        if self.start:
            obj["from"] = self.start
            obj["frontier"] = [_b64(h) for h in self.frontier]
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> ExportHeader:
        if not isinstance(obj, dict):
            raise ExportFormatError("header must be a JSON object")
        if obj.get("format") != FORMAT:
            raise ExportFormatError(f"unsupported format {obj.get('format')!r} (expected {FORMAT!r})")
        unknown = set(obj) - HEADER_KEYS
        if unknown:
            raise ExportFormatError(f"unknown header members {sorted(unknown)}")
        for key in ("origin", "verifier_key", "checkpoint"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise ExportFormatError(f"header member {key!r} must be a non-empty string")
        checkpoints = obj.get("checkpoints", [])
        if not isinstance(checkpoints, list) or not all(isinstance(c, str) for c in checkpoints):
            raise ExportFormatError("header member 'checkpoints' must be a list of strings")
        proofs: dict[int, list[bytes]] = {}
        raw_proofs = obj.get("consistency_proofs", [])
        if not isinstance(raw_proofs, list):
            raise ExportFormatError("header member 'consistency_proofs' must be a list")
        for item in raw_proofs:
            _exact_keys(item, {"from_size", "proof"}, "consistency proof")
            size = item["from_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size in proofs:
                raise ExportFormatError("consistency proof 'from_size' must be a distinct non-negative integer")
            if not isinstance(item["proof"], list):
                raise ExportFormatError("consistency proof 'proof' must be a list")
            proofs[size] = [_unb64(h, f"consistency proof from size {size}") for h in item["proof"]]
        exported_at = obj.get("exported_at")
        if exported_at is not None:
            _check_time(exported_at)
        start = obj.get("from", 0)
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= MAX_SAFE_INTEGER:
            raise ExportFormatError("header member 'from' must be a non-negative integer")
        raw_frontier = obj.get("frontier", [])
        if not isinstance(raw_frontier, list):
            raise ExportFormatError("header member 'frontier' must be a list")
        frontier = [_unb64(h, "frontier hash") for h in raw_frontier]
        if len(frontier) != start.bit_count():
            raise ExportFormatError(f"a range export from entry {start} needs {start.bit_count()} frontier hashes")
        return cls(
            obj["origin"],
            obj["verifier_key"],
            obj["checkpoint"],
            list(checkpoints),
            proofs,
            exported_at,
            start,
            frontier,
        )


@dataclass(frozen=True)
class ExportLine:
    """One entry line as read from a file (``lineno`` is 1-based, the header is line 1)."""

    lineno: int
    index: Any
    entry: Any
    leaf_hash: bytes | None


def _dump_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


class TextSink(Protocol):
    """Where :class:`ExportWriter` writes: a text file, or anything with its ``write``."""

    def write(self, text: str, /) -> int: ...


class ExportWriter:
    """Stream an export: header first, then entries in index order.

    >>> writer = ExportWriter(fp, header)
    >>> for entry, stored_hash in rows:
    ...     writer.write_entry(entry, leaf_hash=stored_hash)
    """

    def __init__(self, fp: TextSink, header: ExportHeader) -> None:
        self._fp = fp
        self._next = header.start
        fp.write(_dump_line(header.to_json()))

    @property
    def count(self) -> int:
        return self._next

    def write_entry(self, entry: Mapping[str, Any], leaf_hash: bytes | None = None) -> None:
        validate_entry(entry)
        if entry["index"] != self._next:
            raise ExportFormatError(f"entry {entry['index']} written where entry {self._next} belongs")
        line: dict[str, Any] = {"index": self._next, "entry": entry}
        if leaf_hash is not None:
            line["leaf_hash"] = bytes(leaf_hash).hex()
        self._fp.write(_dump_line(line))
        self._next += 1


def _decode_line(raw: bytes, lineno: int) -> Any:
    if not raw.endswith(b"\n"):
        raise ExportFormatError(f"line {lineno} is not terminated by a newline")
    try:
        text = raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportFormatError(f"line {lineno} is not valid UTF-8") from exc
    try:
        return parse_json_strict(text)
    except ExportFormatError as exc:
        raise ExportFormatError(f"line {lineno}: {exc}") from exc


def read_export(fp: IO[bytes]) -> tuple[ExportHeader, Iterator[ExportLine]]:
    """Parse the header and return a lazy iterator over the entry lines (binary file object).

    Line-level structure is checked here (JSON, members, leaf_hash hex); the meaning of
    ``index`` and ``entry`` is left to the verifier so it can report precisely.
    """
    first = fp.readline()
    if not first:
        raise ExportFormatError("export is empty (no header line)")
    header = ExportHeader.from_json(_decode_line(first, 1))

    def lines() -> Iterator[ExportLine]:
        lineno = 1
        for raw in iter(fp.readline, b""):
            lineno += 1
            obj = _decode_line(raw, lineno)
            if not isinstance(obj, dict) or not {"index", "entry"} <= set(obj) or set(obj) - LINE_KEYS:
                raise ExportFormatError(f"line {lineno} must be an object with 'index', 'entry' [, 'leaf_hash']")
            hint = obj.get("leaf_hash")
            hint_bytes: bytes | None = None
            if hint is not None:
                if not isinstance(hint, str) or not _HEX_RE.fullmatch(hint) or len(hint) != 64:
                    raise ExportFormatError(f"line {lineno}: leaf_hash must be 64 lowercase hex digits")
                hint_bytes = bytes.fromhex(hint)
            yield ExportLine(lineno, obj["index"], obj["entry"], hint_bytes)

    return header, lines()
