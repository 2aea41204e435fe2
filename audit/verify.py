"""Offline verifier for audit log exports (no Django needed).

    python -m audit.verify PATH [--key VKEY | --key @FILE] [--previous CHECKPOINT_FILE]

Checks, in order: the export's structure; the checkpoint signature (with ``--key``, or
the key in the export header -- a convenience that only proves self-consistency); the
entries are exactly 0..n-1 in order and well-formed; the root recomputed from every
entry equals the signed root; earlier signed checkpoints and consistency proofs carried
in the header; and with ``--previous``, that the log only grew since that checkpoint
(old root recomputed from the leaves, and a consistency proof checked both ways).

Exit status: 0 valid, 1 invalid (one line "FAIL: <reason>" on stderr), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    MalformedCheckpointError,
    SignatureError,
    Verifier,
    parse_checkpoint,
    parse_vkey,
)
from audit.export_format import ExportFormatError, canonical_leaf_bytes, read_export
from audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    consistency_proof_coords,
    leaf_hash,
    verify_consistency,
)

__all__ = ["VerificationError", "VerifyResult", "main", "verify_export"]

HEADER_KEY_WARNING = (
    "no --key given: trusting the verifier key from the export header, which only shows that the "
    "export is self-consistent; pass --key with the log's published key to detect a re-signed export"
)


class VerificationError(Exception):
    """The export is not a faithful copy of the signed log; ``str()`` is the one-line reason."""


@dataclass
class VerifyResult:
    origin: str
    size: int
    root: bytes
    key: str
    previous_size: int | None = None
    warnings: list[str] = field(default_factory=list)


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
) -> VerifyResult:
    """Verify an export read from the binary file ``fp``; raise :class:`VerificationError` if invalid."""
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

    checkpoint = _open_checkpoint(header.checkpoint, verifier, "checkpoint")
    if checkpoint.origin != header.origin:
        _fail(f"checkpoint origin {checkpoint.origin!r} does not match the export origin {header.origin!r}")
    n = checkpoint.size

    prev: Checkpoint | None = None
    if previous is not None:
        prev = _open_checkpoint(previous, verifier, "previous checkpoint")
        if prev.origin != checkpoint.origin:
            _fail(f"previous checkpoint is for another log (origin {prev.origin!r})")
        if prev.size > n:
            _fail(f"not consistent with previous checkpoint (size {prev.size}): the log now has {n} entries")

    earlier: list[Checkpoint] = []
    for k, text in enumerate(header.checkpoints, start=1):
        c = _open_checkpoint(text, verifier, f"earlier checkpoint #{k} in the export header")
        if c.origin != checkpoint.origin:
            _fail(f"earlier checkpoint #{k} in the export header is for another log (origin {c.origin!r})")
        if c.size > n or (earlier and c.size <= earlier[-1].size):
            _fail(f"earlier checkpoints in the export header are not in ascending size order up to {n}")
        earlier.append(c)
    for size in header.consistency_proofs:
        if size > n:
            _fail(f"export consistency proof from size {size} is beyond the checkpoint size {n}")

    # Which prefix roots and which perfect-subtree nodes to keep while streaming (O(log n) memory).
    need_roots = {c.size for c in earlier} | set(header.consistency_proofs) | {n}
    need_nodes: set[tuple[int, int]] = set()
    if prev is not None:
        need_roots.add(prev.size)
        need_nodes = {c for group in consistency_proof_coords(prev.size, n) for c in group}
    roots_at: dict[int, bytes] = {0: EMPTY_ROOT}
    nodes: dict[tuple[int, int], bytes] = {}
    compact = CompactRange()
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
    anchors = sorted({(c.size, c.root) for c in earlier} | ({(prev.size, prev.root)} if prev else set()))
    anchors = [(size, signed) for size, signed in anchors if size > 0]
    if root != checkpoint.root and n == 0:
        _fail("checkpoint of size 0 does not carry the empty-tree root")
    if root != checkpoint.root:
        good, bad = 0, n
        for size, signed in anchors:
            if roots_at[size] == signed:
                good = max(good, size)
            else:
                bad = min(bad, size)
                break
        good = min(good, bad - 1)
        if hint_mismatch is not None and good <= hint_mismatch < bad:
            _fail(f"entry {hint_mismatch} changed: root mismatch")
        _fail(_range_text(good, bad))
    if hint_mismatch is not None:
        _fail(f"entry {hint_mismatch}: the stored leaf_hash does not match the entry (export inconsistent)")
    for c in earlier:
        if roots_at[c.size] != c.root:
            _fail(f"not consistent with earlier checkpoint (size {c.size}) in the export header")

    for size, proof in sorted(header.consistency_proofs.items()):
        try:
            verify_consistency(size, n, roots_at[size], root, proof)
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
    )


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
    args = parser.parse_args(argv)

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    try:
        key = _read_key(args.key) if args.key is not None else None
        previous = None
        if args.previous is not None:
            # Tolerate a saved file's CRLF line ends or extra blank lines after the note.
            text = Path(args.previous).read_text(encoding="utf-8").replace("\r\n", "\n")
            previous = text.rstrip("\n") + "\n"
        with open(args.path, "rb") as fp:
            result = verify_export(fp, key=key, previous=previous, warn=warn)
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
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
