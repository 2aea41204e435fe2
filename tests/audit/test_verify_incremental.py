"""The offline verifier's witness quorum (``--witness``/``--quorum``), range exports and incremental
verification (``--since STATE``), without Django."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.checkpoint import cosign, cosigner_vkey_for, make_checkpoint, split_note
from audit.export_format import ExportHeader, ExportWriter, canonical_leaf_bytes
from audit.verify import VerificationError, VerifiedState, verify_export
from tests.audit.test_verify import LOG_KEY, ORIGIN, VKEY, entries_for

REPO = Path(__file__).resolve().parents[2]
W_KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (7, 8, 9)]
W_NAMES = [f"witness{i}.example/w" for i in range(3)]
W_VKEYS = [cosigner_vkey_for(k.public_key(), n) for k, n in zip(W_KEYS, W_NAMES, strict=True)]

ENTRIES = entries_for(60)
STORE = merkle.MemoryNodeStore.from_leaves(canonical_leaf_bytes(e) for e in ENTRIES)


def checkpoint(size: int, cosigners: tuple[int, ...] = ()) -> str:
    note = make_checkpoint(ORIGIN, size, STORE.root(size), LOG_KEY)
    body, _ = split_note(note)
    return note + "".join(cosign(body, W_KEYS[i], W_NAMES[i], 1_750_000_000 + i) for i in cosigners)


def export(
    size: int, *, start: int = 0, cosigners: tuple[int, ...] = (), hints: bool = True, earlier: tuple[int, ...] = ()
) -> str:
    header = ExportHeader(
        origin=ORIGIN,
        verifier_key=VKEY,
        checkpoint=checkpoint(size, cosigners),
        checkpoints=[checkpoint(s) for s in earlier],
        consistency_proofs={s: STORE.consistency_proof(s, size) for s in earlier},
        start=start,
        frontier=merkle.CompactRange.from_store(STORE, start).hashes,
    )
    buf = io.StringIO()
    writer = ExportWriter(buf, header)
    for i in range(start, size):
        writer.write_entry(ENTRIES[i], leaf_hash=STORE.get_node(0, i) if hints else None)
    return buf.getvalue()


def run(text: str, **kw) -> str:
    try:
        verify_export(io.BytesIO(text.encode()), key=VKEY, **kw)
    except VerificationError as exc:
        return str(exc)
    return "OK"


def edit(text: str, index: int, start: int = 0, **change: str) -> str:
    lines = text.splitlines(keepends=True)
    obj = json.loads(lines[index - start + 1])
    obj["entry"].update(change)
    lines[index - start + 1] = json.dumps(obj) + "\n"
    return "".join(lines)


# --------------------------------------------------------------------------- quorum


def test_quorum_of_cosignatures() -> None:
    two = export(30, cosigners=(0, 1))
    assert run(two, witnesses=W_VKEYS[:2]) == "OK"
    assert run(two, witnesses=W_VKEYS, quorum=2) == "OK"
    result = verify_export(io.BytesIO(two.encode()), key=VKEY, witnesses=W_VKEYS, quorum=1)
    assert sorted(c.name for c in result.cosigners) == W_NAMES[:2]
    reason = run(two, witnesses=W_VKEYS, quorum=3)
    assert "cosigned by 2 of the given witnesses, quorum is 3" in reason and W_NAMES[2] in reason
    assert "quorum is 1" in run(export(30, cosigners=()), witnesses=W_VKEYS[:1], quorum=1)
    # a cosignature for another checkpoint pasted under this one
    body12, _ = split_note(checkpoint(12))
    header, *rest = two.splitlines(keepends=True)
    obj = json.loads(header)
    obj["checkpoint"] = checkpoint(30) + cosign(body12, W_KEYS[2], W_NAMES[2], 1)
    forged = json.dumps(obj) + "\n" + "".join(rest)
    assert "invalid cosignature by " + W_NAMES[2] in run(forged, witnesses=W_VKEYS[2:], quorum=1)
    # the log's key is not a witness key, and a quorum above the number of keys is an error
    assert "malformed" in run(two, witnesses=[VKEY], quorum=1)
    assert "larger than" in run(two, witnesses=W_VKEYS[:1], quorum=2)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit.verify", *map(str, args)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_cli_quorum(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(export(30, cosigners=(1,)))
    (tmp_path / "w1.vkey").write_text(W_VKEYS[1] + "\n")
    ok = cli(path, "--key", VKEY, "--witness", f"@{tmp_path / 'w1.vkey'}", "--witness", W_VKEYS[0], "--quorum", "1")
    assert ok.returncode == 0 and f"cosigned by {W_NAMES[1]}" in ok.stdout, ok.stderr
    bad = cli(path, "--key", VKEY, "--witness", W_VKEYS[1], "--witness", W_VKEYS[0])  # default quorum: all
    assert bad.returncode == 1 and bad.stderr.startswith("FAIL: checkpoint of size 30 cosigned by 1")
    usage = cli(path, "--key", VKEY, "--quorum", "1")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


# --------------------------------------------------------------------------- range exports


def test_range_export_verifies_against_the_signed_root() -> None:
    assert run(export(60, start=37)) == "OK"
    assert run(export(60, start=32, earlier=(40, 50))) == "OK"
    assert run(export(60, start=60)) == "OK"


def test_edited_entry_in_a_range_export_is_named() -> None:
    text = export(60, start=37)
    assert run(edit(text, 45, 37, action="card.revoked")) == "entry 45 changed: root mismatch"
    # without the hints, earlier checkpoints in the range narrow it down
    text = export(60, start=37, hints=False, earlier=(44, 45, 50))
    assert run(edit(text, 44, 37, outcome="denied")) == "entry 44 changed: root mismatch"
    # a forged frontier cannot make other entries match the signed root
    header, *rest = export(60, start=37).splitlines(keepends=True)
    obj = json.loads(header)
    obj["frontier"][0] = obj["frontier"][1]
    reason = run(json.dumps(obj) + "\n" + "".join(rest))
    assert reason.startswith("entries 37..59") and "frontier" in reason


# --------------------------------------------------------------------------- incremental


def state_at(size: int) -> VerifiedState:
    result = verify_export(io.BytesIO(export(size).encode()), key=VKEY)
    assert result.state is not None and result.state.size == size
    return result.state


def test_since_reads_only_new_entries_and_returns_the_next_state() -> None:
    state = state_at(20)
    result = verify_export(io.BytesIO(export(33, start=20).encode()), key=VKEY, since=state)
    assert (result.size, result.start) == (33, 20)
    assert result.state == state_at(33)
    # a range export that starts earlier than the state is checked against the state's root too
    assert verify_export(io.BytesIO(export(40, start=16).encode()), key=VKEY, since=state).state == state_at(40)
    # unchanged log
    assert run(export(20, start=20), since=state) == "OK"


def test_since_refuses_rollback_fork_and_gap() -> None:
    state = state_at(20)
    assert "rolled back" in run(export(15), since=state)
    assert "export from 20" in run(export(33, start=25), since=state)
    other = entries_for(60, salt="-fork")
    forked = VerifiedState(
        ORIGIN,
        20,
        merkle.root_from_leaves(canonical_leaf_bytes(e) for e in other[:20]),
        merkle.CompactRange.from_store(
            merkle.MemoryNodeStore.from_leaves(canonical_leaf_bytes(e) for e in other[:20]), 20
        ).hashes,
        "",
    )
    assert "not consistent with the verified state" in run(export(33, start=20), since=forked)
    assert "not consistent with the verified state (size 20)" in run(export(33, start=10), since=forked)
    assert "not consistent with the verified state (size 20)" in run(export(33), since=forked)


def test_cli_since_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = tmp_path / "a.jsonl"
    first.write_text(export(25))
    assert cli(first, "--key", VKEY, "--since", state).returncode == 0
    saved = json.loads(state.read_text())
    assert saved["size"] == 25 and len(saved["frontier"]) == (25).bit_count()
    second = tmp_path / "b.jsonl"
    second.write_text(export(50, start=25))
    ok = cli(second, "--key", VKEY, "--since", state)
    assert ok.returncode == 0 and "read entries 25..49" in ok.stdout, ok.stderr
    assert json.loads(state.read_text())["size"] == 50
    bad = tmp_path / "c.jsonl"
    bad.write_text(edit(export(60, start=50), 55, 50, action="x.y"))
    failed = cli(bad, "--key", VKEY, "--since", state)
    assert failed.returncode == 1 and failed.stderr.strip() == "FAIL: entry 55 changed: root mismatch"
    assert json.loads(state.read_text())["size"] == 50  # a failed run keeps the old state
    state.write_text("{}")
    broken = cli(second, "--key", VKEY, "--since", state)
    assert broken.returncode == 2 and broken.stderr.startswith("error: verifier state")
    assert "Traceback" not in broken.stderr


@pytest.mark.parametrize("size", [1, 2, 3, 31, 32, 33])
def test_since_every_split(size: int) -> None:
    for m in range(size + 1):
        text = export(size, start=m)
        assert verify_export(io.BytesIO(text.encode()), key=VKEY, since=state_at(m)).root == STORE.root(size)
