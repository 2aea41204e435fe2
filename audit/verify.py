"""Offline verifier for audit log exports (no Django needed).

    python -m audit.verify PATH [--key VKEY | --key @FILE] [--previous CHECKPOINT_FILE]
                                [--witness VKEY ...] [--quorum N] [--since STATE]

Checks, in order: the export's structure; the checkpoint signature (with ``--key``, or
the key in the export header -- a convenience that only proves self-consistency); the
entries are exactly 0..n-1 in order and well-formed; the root recomputed from every
entry equals the signed root; earlier signed checkpoints and consistency proofs carried
in the header; and with ``--previous``, that the log only grew since that checkpoint
(old root recomputed from the leaves, and a consistency proof checked both ways).

``--witness VKEY`` (repeatable; type 0x04 cosigner keys, or @FILE) and ``--quorum N`` (default:
all given witnesses): the checkpoint must carry valid cosignature/v1 lines by at least N of them.

``--since STATE``: incremental verification. STATE (JSON, written by the previous run) holds the
size, root and frontier (compact range) of the last verified checkpoint; the export may then be a
range export starting at that size (``from`` in its header), and only its entries are read: the
frontier extended by them must reach the newly signed root, which also proves the new tree
extends the old one. On success the new state replaces STATE (atomically). A missing STATE
file means nothing was verified yet.

Exit status: 0 valid, 1 invalid (one line "FAIL: <reason>" on stderr), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    Cosignature,
    MalformedCheckpointError,
    SignatureError,
    Verifier,
    parse_checkpoint,
    parse_cosigner_vkey,
    parse_vkey,
    verify_cosignatures,
)
from audit.export_format import ExportFormatError, canonical_leaf_bytes, read_export
from audit.merkle import (
    CompactRange,
    ProofError,
    consistency_proof,
    consistency_proof_coords,
    frontier_coords,
    leaf_hash,
    verify_consistency,
)

__all__ = ["STATE_FORMAT", "VerificationError", "VerifiedState", "VerifyResult", "main", "verify_export"]

STATE_FORMAT = "ecard-audit-verify-state/1"

HEADER_KEY_WARNING = (
    "no --key given: trusting the verifier key from the export header, which only shows that the "
    "export is self-consistent; pass --key with the log's published key to detect a re-signed export"
)


class VerificationError(Exception):
    """The export is not a faithful copy of the signed log; ``str()`` is the one-line reason."""


class StateError(Exception):
    """A verifier state file that cannot be used (usage error, not a verdict on the export)."""


@dataclass
class VerifiedState:
    """What ``--since`` keeps between runs: the last verified checkpoint and the frontier at its size."""

    origin: str
    size: int
    root: bytes
    frontier: list[bytes]
    checkpoint: str

    def to_json(self) -> dict[str, object]:
        return {
            "format": STATE_FORMAT,
            "origin": self.origin,
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "frontier": [base64.b64encode(h).decode() for h in self.frontier],
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_json(cls, data: object) -> VerifiedState:
        try:
            if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
                raise ValueError(f"not an {STATE_FORMAT} file")
            size, origin, checkpoint = data["size"], data["origin"], data["checkpoint"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError("size must be a non-negative integer")
            if not isinstance(origin, str) or not isinstance(checkpoint, str):
                raise ValueError("origin and checkpoint must be strings")
            root = base64.b64decode(data["root"], validate=True)
            frontier = [base64.b64decode(h, validate=True) for h in data["frontier"]]
            compact = CompactRange(size, frontier)
        except (KeyError, TypeError, ValueError, ProofError) as exc:
            raise StateError(f"verifier state is unusable: {exc}") from None
        if compact.root() != root:
            raise StateError("verifier state is inconsistent: its frontier does not lead to its root")
        return cls(origin, size, root, frontier, checkpoint)


@dataclass
class VerifyResult:
    origin: str
    size: int
    root: bytes
    key: str
    previous_size: int | None = None
    warnings: list[str] = field(default_factory=list)
    start: int = 0
    cosigners: list[Cosignature] = field(default_factory=list)
    state: VerifiedState | None = None


def _fail(reason: str) -> NoReturn:
    raise VerificationError(reason)


class _DictStore:
    def __init__(self, nodes: dict[tuple[int, int], bytes]) -> None:
        self._nodes = nodes

    def get_node(self, level: int, index: int) -> bytes:
        return self._nodes[(level, index)]


def _open_checkpoint(text: str, verifier: Verifier, what: str) -> Checkpoint:
    try:
        return parse_checkpoint(text, verifier)
    except SignatureError:
        _fail(f"{what} signature invalid")
    except CheckpointError as exc:
        _fail(f"{what} malformed: {exc}")


def _range_text(good: int, bad: int) -> str:
    if bad - good == 1:
        return f"entry {good} changed: root mismatch"
    return (
        f"entries {good}..{bad - 1}: at least one changed, removed or reordered: "
        f"root mismatch with the signed checkpoint of size {bad}"
    )


def verify_export(
    fp: IO[bytes],
    *,
    key: str | None = None,
    previous: str | None = None,
    warn: Callable[[str], None] | None = None,
    witnesses: Sequence[str] = (),
    quorum: int | None = None,
    since: VerifiedState | None = None,
) -> VerifyResult:
    """Verify an export read from the binary file ``fp``; raise :class:`VerificationError` if invalid.

    ``witnesses`` (cosigner vkeys) and ``quorum`` (default: all of them) require cosignatures on
    the checkpoint; ``since`` is the state of the last verification (see the module docstring);
    the result's ``state`` is the new one."""
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    try:
        header, lines = read_export(fp)
    except ExportFormatError as exc:
        _fail(f"export malformed: {exc}")

    if key is None:
        note(HEADER_KEY_WARNING)
        key_text, key_what = header.verifier_key, "export header verifier key"
    else:
        key_text, key_what = key.strip(), "--key"
        if header.verifier_key.strip() != key_text:
            note("the export header names a different verifier key; verifying with --key")
    try:
        verifier = parse_vkey(key_text)
    except MalformedCheckpointError as exc:
        _fail(f"{key_what} malformed: {exc}")

    witness_keys: list[Verifier] = []
    for text in witnesses:
        try:
            witness_keys.append(parse_cosigner_vkey(text))
        except MalformedCheckpointError as exc:
            _fail(f"--witness {text.split('+')[0]!r} malformed: {exc}")
    if quorum is None:
        quorum = len(witness_keys)
    if quorum > len(witness_keys):
        _fail(f"quorum {quorum} is larger than the {len(witness_keys)} witness key(s) given")

    checkpoint = _open_checkpoint(header.checkpoint, verifier, "checkpoint")
    if checkpoint.origin != header.origin:
        _fail(f"checkpoint origin {checkpoint.origin!r} does not match the export origin {header.origin!r}")
    n = checkpoint.size

    cosigners: list[Cosignature] = []
    if witness_keys:
        try:
            cosigners = verify_cosignatures(header.checkpoint, witness_keys)
        except SignatureError as exc:
            _fail(f"checkpoint {exc}")
        except CheckpointError as exc:
            _fail(f"checkpoint malformed: {exc}")
    if len(cosigners) < quorum:
        cosigned_by = {c.name for c in cosigners}
        missing = ", ".join(w.name for w in witness_keys if w.name not in cosigned_by)
        _fail(
            f"checkpoint of size {n} cosigned by {len(cosigners)} of the given witnesses, quorum is {quorum} "
            f"(no valid cosignature by {missing})"
        )

    start = header.start
    if start > n:
        _fail(f"export starts at entry {start}, beyond the signed checkpoint size {n}")
    if since is not None:
        if since.origin != checkpoint.origin:
            _fail(f"verifier state is for another log (origin {since.origin!r})")
        if since.size > n:
            _fail(
                f"not consistent with the verified state: the log had {since.size} entries, the signed "
                f"checkpoint now has {n} (rolled back)"
            )
        if start > since.size:
            _fail(
                f"export starts at entry {start}, but the verified state ends at {since.size}: export from {since.size}"
            )
        if start == since.size and start and header.frontier != since.frontier:
            _fail(
                f"not consistent with the verified state (size {since.size}): the export's frontier at entry "
                f"{start} differs"
            )

    prev: Checkpoint | None = None
    if previous is not None:
        prev = _open_checkpoint(previous, verifier, "previous checkpoint")
        if prev.origin != checkpoint.origin:
            _fail(f"previous checkpoint is for another log (origin {prev.origin!r})")
        if prev.size > n:
            _fail(f"not consistent with previous checkpoint (size {prev.size}): the log now has {n} entries")
        if prev.size < start:
            _fail(f"previous checkpoint (size {prev.size}) is before the export's first entry {start}")

    earlier: list[Checkpoint] = []
    for k, text in enumerate(header.checkpoints, start=1):
        c = _open_checkpoint(text, verifier, f"earlier checkpoint #{k} in the export header")
        if c.origin != checkpoint.origin:
            _fail(f"earlier checkpoint #{k} in the export header is for another log (origin {c.origin!r})")
        if c.size > n or (earlier and c.size <= earlier[-1].size):
            _fail(f"earlier checkpoints in the export header are not in ascending size order up to {n}")
        earlier.append(c)
    signed_roots = {c.size: c.root for c in earlier}
    for size in header.consistency_proofs:
        if size > n:
            _fail(f"export consistency proof from size {size} is beyond the checkpoint size {n}")
        if size < start and size not in signed_roots:
            _fail(f"export consistency proof from size {size} is before the export's first entry {start}")

    # Which prefix roots and which perfect-subtree nodes to keep while streaming (O(log n) memory).
    need_roots = {c.size for c in earlier} | set(header.consistency_proofs) | {n}
    need_nodes: set[tuple[int, int]] = set()
    if prev is not None:
        need_roots.add(prev.size)
        need_nodes = {c for group in consistency_proof_coords(prev.size, n) for c in group}
    if since is not None:
        need_roots.add(since.size)
    if since is not None and start == since.size:
        compact = CompactRange(start, list(since.frontier))
    else:
        compact = CompactRange(start, list(header.frontier))
    roots_at: dict[int, bytes] = {start: compact.root()}
    nodes: dict[tuple[int, int], bytes] = dict(zip(frontier_coords(start), compact.hashes, strict=True))
    hint_mismatch: int | None = None

    try:
        for line in lines:
            i = compact.size
            idx = line.index
            if not isinstance(idx, int) or isinstance(idx, bool):
                _fail(f"line {line.lineno}: index is not an integer")
            if idx != i:
                if idx > i:
                    _fail(f"entry {i} missing: line {line.lineno} holds entry {idx}")
                _fail(f"entry {idx} out of order or duplicated at line {line.lineno} (expected entry {i})")
            if i >= n:
                _fail(f"export has entries beyond the signed checkpoint size {n} (entry {i})")
            entry = line.entry
            if isinstance(entry, dict) and "index" in entry and entry["index"] != i:
                _fail(f"entry {i} changed: its index member says {entry['index']!r}")
            try:
                lh = leaf_hash(canonical_leaf_bytes(entry))
            except ExportFormatError as exc:
                _fail(f"entry {i} malformed: {exc}")
            if line.leaf_hash is not None and line.leaf_hash != lh and hint_mismatch is None:
                hint_mismatch = i
            for level, index, h in compact.append(lh):
                if (level, index) in need_nodes:
                    nodes[(level, index)] = h
            if compact.size in need_roots:
                roots_at[compact.size] = compact.root()
    except ExportFormatError as exc:
        _fail(f"export malformed: {exc}")

    if compact.size < n:
        _fail(f"entry {compact.size} missing: the export ends there but the signed checkpoint covers {n} entries")
    root = roots_at[n]

    # Signed roots we can hold the recomputed prefix roots against (for locating a change).
    anchors = sorted(
        {(c.size, c.root) for c in earlier}
        | ({(prev.size, prev.root)} if prev else set())
        | ({(since.size, since.root)} if since else set())
    )
    anchors = [(size, signed) for size, signed in anchors if size > start]
    if root != checkpoint.root and n == 0:
        _fail("checkpoint of size 0 does not carry the empty-tree root")
    if since is not None and roots_at[since.size] != since.root:
        _fail(f"not consistent with the verified state (size {since.size})")
    if root != checkpoint.root:
        good, bad = start, n
        for size, signed in anchors:
            if roots_at[size] == signed:
                good = max(good, size)
            else:
                bad = min(bad, size)
                break
        good = min(good, bad - 1)
        if hint_mismatch is not None and good <= hint_mismatch < bad:
            _fail(f"entry {hint_mismatch} changed: root mismatch")
        text = _range_text(good, bad)
        if good == start and start and since is None:
            text += f" (or the export's frontier of entries 0..{start - 1})"
        _fail(text)
    if hint_mismatch is not None:
        _fail(f"entry {hint_mismatch}: the stored leaf_hash does not match the entry (export inconsistent)")
    for c in earlier:
        if c.size >= start and roots_at[c.size] != c.root:
            _fail(f"not consistent with earlier checkpoint (size {c.size}) in the export header")

    for size, proof in sorted(header.consistency_proofs.items()):
        try:
            verify_consistency(size, n, roots_at[size] if size >= start else signed_roots[size], root, proof)
        except ProofError:
            _fail(f"export consistency proof from size {size} does not verify")

    if prev is not None:
        m = prev.size
        if roots_at[m] != prev.root:
            _fail(f"not consistent with previous checkpoint (size {m})")
        try:
            verify_consistency(m, n, prev.root, checkpoint.root, consistency_proof(_DictStore(nodes), m, n))
        except (ProofError, KeyError):
            _fail(f"not consistent with previous checkpoint (size {m}): recomputed proof does not verify")
        # An included proof for m was already checked above against the recomputed old root.

    return VerifyResult(
        origin=checkpoint.origin,
        size=n,
        root=root,
        key=verifier.vkey,
        previous_size=prev.size if prev is not None else None,
        warnings=warnings,
        start=start,
        cosigners=cosigners,
        state=VerifiedState(checkpoint.origin, n, root, list(compact.hashes), header.checkpoint),
    )


def load_state(path: Path) -> VerifiedState | None:
    """The state in ``path`` (None if the file does not exist); :class:`StateError` if unusable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise StateError(f"verifier state {path} is not JSON") from None
    return VerifiedState.from_json(data)


def save_state(path: Path, state: VerifiedState) -> None:
    """Write the state next to ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=".verify-state-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            json.dump(state.to_json(), fp, indent=1)
            fp.write("\n")
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_key(value: str) -> str:
    if value.startswith("@"):
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audit.verify",
        description="Verify an E-Card audit log export (ecard-audit-export/1) offline.",
    )
    parser.add_argument("path", metavar="PATH", help="the export file (JSON Lines)")
    parser.add_argument("--key", metavar="VKEY", help="the log's verifier key, or @FILE to read it from a file")
    parser.add_argument(
        "--previous", metavar="CHECKPOINT_FILE", help="a checkpoint seen earlier: the export must extend it"
    )
    parser.add_argument(
        "--witness",
        metavar="VKEY",
        action="append",
        default=[],
        help="a witness's cosigner key (type 0x04), or @FILE; repeatable",
    )
    parser.add_argument(
        "--quorum", metavar="N", type=int, help="at least N of the --witness keys must have cosigned (default: all)"
    )
    parser.add_argument(
        "--since",
        metavar="STATE",
        type=Path,
        help="incremental: verify from the state of the last run (created if missing) and update it",
    )
    args = parser.parse_args(argv)
    if args.quorum is not None and (args.quorum < 1 or args.quorum > len(args.witness)):
        parser.error(f"--quorum must be between 1 and the number of --witness keys ({len(args.witness)})")

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    try:
        key = _read_key(args.key) if args.key is not None else None
        previous = None
        if args.previous is not None:
            # Tolerate a saved file's CRLF line ends or extra blank lines after the note.
            text = Path(args.previous).read_text(encoding="utf-8").replace("\r\n", "\n")
            previous = text.rstrip("\n") + "\n"
        witnesses = [_read_key(w) for w in args.witness]
        since = load_state(args.since) if args.since is not None else None
        with open(args.path, "rb") as fp:
            result = verify_export(
                fp, key=key, previous=previous, warn=warn, witnesses=witnesses, quorum=args.quorum, since=since
            )
        if args.since is not None and result.state is not None:
            try:
                save_state(args.since, result.state)
            except OSError as exc:
                reason = exc.strerror or exc
                print(f"error: verified, but cannot write the state {args.since}: {reason}", file=sys.stderr)
                return 2
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as exc:
        print(f"FAIL: previous checkpoint or key file is not UTF-8: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read {exc.filename or args.path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    root64 = base64.b64encode(result.root).decode()
    line = f"OK: {result.size} entries of {result.origin}, root {root64}, signed by {result.key.split('+')[0]}"
    if result.previous_size is not None:
        line += f"; consistent with previous checkpoint (size {result.previous_size})"
    if result.start:
        line += f"; read entries {result.start}..{result.size - 1}"
    if args.since is not None:
        line += f"; state saved to {args.since}"
    if result.cosigners:
        line += "; cosigned by " + ", ".join(c.name for c in result.cosigners)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
