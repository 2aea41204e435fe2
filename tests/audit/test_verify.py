"""The offline verifier accepts a genuine export and rejects every kind of tampering.

Run both in-process (``audit.verify.main``) and as ``python -m audit.verify`` in a
subprocess, without Django.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.checkpoint import make_checkpoint, vkey_for
from audit.export_format import ExportHeader, ExportWriter, canonical_leaf_bytes, entry_leaf_hash, make_entry
from audit.verify import HEADER_KEY_WARNING, VerificationError, main, verify_export

REPO = Path(__file__).resolve().parents[2]
ORIGIN = "ecard.example/audit"
N = 30
PREV = 12

LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
EVIL_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
VKEY = vkey_for(LOG_KEY.public_key(), ORIGIN)
EVIL_VKEY = vkey_for(EVIL_KEY.public_key(), ORIGIN)


def entries_for(n: int, salt: str = "") -> list[dict]:
    base = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)
    return [
        make_entry(
            index=i,
            time=base + dt.timedelta(seconds=i),
            actor_type="user" if i % 3 else "system",
            actor_id=None if i % 3 == 0 else f"user-{i % 5}",
            actor_organisation=None if i % 3 == 0 else "bank-a",
            action=["card.issued", "enrollment.created", "update.applied"][i % 3],
            subject_type="card",
            subject_id=f"CIN-{i:04d}{salt}",
            card=f"CIN-{i:04d}{salt}",
            organisation="bank-a",
            outcome="success" if i % 7 else "failure",
            reason=None if i % 7 else "card removed",
            receipt=bytes([i, 0xAB]) if i % 2 else None,
            details={"step": i, "ünïcode": "€", "nested": {"ok": i % 2 == 0, "list": [i, None]}},
        )
        for i in range(n)
    ]


def checkpoint_for(entries: list[dict], key: Ed25519PrivateKey = LOG_KEY) -> str:
    root = merkle.root_from_leaves(canonical_leaf_bytes(e) for e in entries)
    return make_checkpoint(ORIGIN, len(entries), root, key)


def export_text(
    entries: list[dict],
    *,
    key: Ed25519PrivateKey = LOG_KEY,
    vkey: str = VKEY,
    hints: bool = False,
    earlier_every: int = 0,
    proofs_from: tuple[int, ...] = (),
) -> str:
    """Write an export as the server would (optionally with hints, earlier checkpoints, proofs)."""
    store = merkle.MemoryNodeStore.from_leaves(canonical_leaf_bytes(e) for e in entries)
    n = len(entries)
    earlier = [
        make_checkpoint(ORIGIN, size, store.root(size), key)
        for size in range(earlier_every, n, earlier_every or 1)
        if earlier_every
    ]
    header = ExportHeader(
        origin=ORIGIN,
        verifier_key=vkey,
        checkpoint=make_checkpoint(ORIGIN, n, store.root(), key),
        checkpoints=earlier,
        consistency_proofs={m: store.consistency_proof(m, n) for m in proofs_from},
        exported_at="2026-11-27T10:00:00.000000Z",
    )
    buf = io.StringIO()
    writer = ExportWriter(buf, header)
    for i, e in enumerate(entries):
        writer.write_entry(e, leaf_hash=store.get_node(0, i) if hints else None)
    return buf.getvalue()


GENUINE = entries_for(N)
PREV_CHECKPOINT = checkpoint_for(GENUINE[:PREV])
FORKED_CHECKPOINT = checkpoint_for(entries_for(PREV, salt="-forked"))


def lines_of(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def run(text: str, *, key: str | None = VKEY, previous: str | None = None) -> str:
    """Verify in-process; return "OK" or the failure reason."""
    try:
        verify_export(io.BytesIO(text.encode()), key=key, previous=previous)
    except VerificationError as exc:
        return str(exc)
    return "OK"


def set_entry(text: str, index: int, change: Callable[[dict], None], *, keep_hint: bool = True) -> str:
    lines = lines_of(text)
    obj = json.loads(lines[index + 1])
    change(obj["entry"])
    if not keep_hint:
        obj.pop("leaf_hash", None)
    lines[index + 1] = json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
    return "".join(lines)


# --------------------------------------------------------------------------- genuine exports


@pytest.mark.parametrize(
    "options",
    [{}, {"hints": True}, {"earlier_every": 1}, {"earlier_every": 7, "proofs_from": (0, 1, PREV, N)}],
)
def test_genuine_export_verifies(options: dict) -> None:
    text = export_text(GENUINE, **options)
    result = verify_export(io.BytesIO(text.encode()), key=VKEY, previous=PREV_CHECKPOINT)
    assert result.size == N and result.origin == ORIGIN and result.previous_size == PREV
    assert result.root == merkle.root_from_leaves(canonical_leaf_bytes(e) for e in GENUINE)
    assert result.warnings == []


@pytest.mark.parametrize("n", [0, 1, 2, 5, 16, 17])
def test_small_logs_verify_against_every_previous_size(n: int) -> None:
    entries = entries_for(n)
    text = export_text(entries, proofs_from=tuple(range(n + 1)))
    for m in range(n + 1):
        assert run(text, previous=checkpoint_for(entries[:m])) == "OK"


def test_header_key_is_trusted_only_with_a_warning() -> None:
    text = export_text(GENUINE)
    seen: list[str] = []
    result = verify_export(io.BytesIO(text.encode()), warn=seen.append)
    assert result.warnings == [HEADER_KEY_WARNING] == seen


# --------------------------------------------------------------------------- tampering


def test_changed_entry_is_rejected() -> None:
    text = export_text(GENUINE)
    bad = set_entry(text, 17, lambda e: e["details"].update(step=999))
    reason = run(bad)
    assert "root mismatch" in reason and "0..29" in reason


def test_changed_entry_is_located_by_earlier_checkpoints() -> None:
    text = export_text(GENUINE, earlier_every=1)
    assert run(set_entry(text, 17, lambda e: e.update(outcome="denied"))) == "entry 17 changed: root mismatch"
    text = export_text(GENUINE, earlier_every=5)
    reason = run(set_entry(text, 17, lambda e: e.update(outcome="denied")))
    assert reason.startswith("entries 15..19: at least one changed")


def test_changed_entry_is_located_by_stored_leaf_hash() -> None:
    text = export_text(GENUINE, hints=True)
    bad = set_entry(text, 17, lambda e: e["actor"].update(id="someone-else"))
    assert run(bad) == "entry 17 changed: root mismatch"
    # Dropping the hint of the edited line does not help the forger.
    bad = set_entry(text, 17, lambda e: e["actor"].update(id="someone-else"), keep_hint=False)
    assert "root mismatch" in run(bad)


def test_wrong_hint_alone_is_reported() -> None:
    text = export_text(GENUINE, hints=True)
    lines = lines_of(text)
    obj = json.loads(lines[5])
    obj["leaf_hash"] = "00" * 32
    lines[5] = json.dumps(obj, ensure_ascii=False) + "\n"
    assert run("".join(lines)).startswith("entry 4: the stored leaf_hash does not match")


def test_changed_index_member_is_rejected() -> None:
    text = export_text(GENUINE)
    assert run(set_entry(text, 3, lambda e: e.update(index=4))) == "entry 3 changed: its index member says 4"


def test_removed_entry_is_rejected() -> None:
    lines = lines_of(export_text(GENUINE))
    del lines[17 + 1]
    assert run("".join(lines)) == "entry 17 missing: line 19 holds entry 18"
    lines = lines_of(export_text(GENUINE))
    del lines[-1]
    assert run("".join(lines)).startswith("entry 29 missing")


def test_removed_and_renumbered_entry_is_rejected() -> None:
    entries = [dict(e) for e in GENUINE]
    del entries[17]
    for i, e in enumerate(entries):
        e["index"] = i
    # The genuine header (checkpoint of size N) over the shortened, renumbered list.
    lines = lines_of(export_text(GENUINE))[:1] + [
        json.dumps({"index": i, "entry": e}, ensure_ascii=False) + "\n" for i, e in enumerate(entries)
    ]
    assert run("".join(lines)).startswith("entry 29 missing")


def test_reordered_entries_are_rejected() -> None:
    lines = lines_of(export_text(GENUINE))
    lines[18], lines[19] = lines[19], lines[18]
    assert run("".join(lines)) == "entry 17 missing: line 19 holds entry 18"
    # Swapping contents but keeping the index order: the indices inside the entries disagree.
    lines = lines_of(export_text(GENUINE))
    a, b = json.loads(lines[18]), json.loads(lines[19])
    a["entry"], b["entry"] = b["entry"], a["entry"]
    lines[18], lines[19] = json.dumps(a) + "\n", json.dumps(b) + "\n"
    assert run("".join(lines)) == "entry 17 changed: its index member says 18"
    # ... and renumbering them too only moves the failure to the root.
    a["entry"]["index"], b["entry"]["index"] = 17, 18
    lines[18], lines[19] = json.dumps(a) + "\n", json.dumps(b) + "\n"
    assert "root mismatch" in run("".join(lines))


def test_inserted_entries_are_rejected() -> None:
    lines = lines_of(export_text(GENUINE))
    lines.insert(18, lines[18])  # duplicate of entry 17
    assert run("".join(lines)) == "entry 17 out of order or duplicated at line 20 (expected entry 18)"
    extra = make_entry(
        index=N,
        time="2026-11-27T12:00:00Z",
        actor_type="system",
        actor_id=None,
        actor_organisation=None,
        action="card.issued",
        subject_type="card",
        subject_id="CIN-9999",
    )
    lines = [*lines_of(export_text(GENUINE)), json.dumps({"index": N, "entry": extra}) + "\n"]
    assert run("".join(lines)) == f"export has entries beyond the signed checkpoint size {N} (entry {N})"


def test_resigned_checkpoint_is_rejected_with_the_published_key() -> None:
    forged_entries = [dict(e) for e in GENUINE]
    forged_entries[17] = {**forged_entries[17], "outcome": "denied"}
    forged = export_text(forged_entries, key=EVIL_KEY, vkey=EVIL_VKEY)
    assert run(forged, key=VKEY) == "checkpoint signature invalid"
    # Trusting the header key cannot catch this: that is why it is only a convenience.
    assert run(forged, key=None) == "OK"
    # Re-signed but keeping the genuine header key: caught even without --key.
    forged_keep_header = export_text(forged_entries, key=EVIL_KEY, vkey=VKEY)
    assert run(forged_keep_header, key=None) == "checkpoint signature invalid"


def test_empty_log_with_a_wrong_root_is_rejected() -> None:
    lines = lines_of(export_text([]))
    header = json.loads(lines[0])
    header["checkpoint"] = make_checkpoint(ORIGIN, 0, b"\x01" * 32, LOG_KEY)
    assert run(json.dumps(header) + "\n") == "checkpoint of size 0 does not carry the empty-tree root"


def test_checkpoint_with_edited_size_is_rejected() -> None:
    lines = lines_of(export_text(GENUINE))
    header = json.loads(lines[0])
    header["checkpoint"] = header["checkpoint"].replace(f"\n{N}\n", f"\n{N - 1}\n", 1)
    lines[0] = json.dumps(header) + "\n"
    assert run("".join(lines)) == "checkpoint signature invalid"


def test_inconsistent_previous_checkpoint_is_rejected() -> None:
    text = export_text(GENUINE)
    assert run(text, previous=PREV_CHECKPOINT) == "OK"
    assert run(text, previous=FORKED_CHECKPOINT) == f"not consistent with previous checkpoint (size {PREV})"
    bigger = checkpoint_for(entries_for(N + 1))
    assert run(text, previous=bigger).startswith(f"not consistent with previous checkpoint (size {N + 1})")
    evil_prev = checkpoint_for(GENUINE[:PREV], key=EVIL_KEY)
    assert run(text, previous=evil_prev) == "previous checkpoint signature invalid"
    other_origin = make_checkpoint("other.example/log", PREV, b"\x00" * 32, LOG_KEY, ORIGIN)
    assert run(text, previous=other_origin).startswith("previous checkpoint is for another log")


def test_bad_consistency_proof_in_header_is_rejected() -> None:
    text = export_text(GENUINE, proofs_from=(PREV,))
    lines = lines_of(text)
    header = json.loads(lines[0])
    proof = header["consistency_proofs"][0]["proof"]
    proof[0], proof[1] = proof[1], proof[0]
    lines[0] = json.dumps(header) + "\n"
    bad = "".join(lines)
    assert run(bad) == f"export consistency proof from size {PREV} does not verify"
    assert run(bad, previous=PREV_CHECKPOINT) == f"export consistency proof from size {PREV} does not verify"


def test_earlier_checkpoint_from_another_history_is_rejected() -> None:
    lines = lines_of(export_text(GENUINE))
    header = json.loads(lines[0])
    header["checkpoints"] = [FORKED_CHECKPOINT]
    lines[0] = json.dumps(header) + "\n"
    assert run("".join(lines)) == f"not consistent with earlier checkpoint (size {PREV}) in the export header"


def test_malformed_exports_are_rejected() -> None:
    text = export_text(GENUINE)
    assert run("").startswith("export malformed")
    assert run("not json\n").startswith("export malformed")
    lines = lines_of(text)
    lines[3] = lines[3].replace('"step":2', '"step":2.0')
    assert run("".join(lines)).startswith("export malformed: line 4")
    lines = lines_of(text)
    lines[3] = lines[3].replace('{"action"', '{"outcome":"denied","action"')
    assert "duplicate key" in run("".join(lines))
    lines = lines_of(text)
    lines[3] = lines[3].replace('"outcome":"success"', '"outcome":"fine"')
    assert run("".join(lines)).startswith("entry 2 malformed")
    assert run(text, key="not a key").startswith("--key malformed")
    other_log_key = vkey_for(EVIL_KEY.public_key(), "other.example")
    assert run(text, key=other_log_key) == "checkpoint signature invalid"


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    path = tmp_path / "export.jsonl"
    path.write_text(export_text(GENUINE, hints=True), encoding="utf-8")
    return path


def test_main_exit_codes(export_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prev = tmp_path / "prev.checkpoint"
    prev.write_text(PREV_CHECKPOINT, encoding="utf-8")
    key_file = tmp_path / "log.vkey"
    key_file.write_text(VKEY + "\n", encoding="utf-8")

    assert main([str(export_file), "--key", VKEY, "--previous", str(prev)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"OK: {N} entries of {ORIGIN}") and f"(size {PREV})" in out and err == ""

    assert main([str(export_file), "--key", f"@{key_file}"]) == 0
    capsys.readouterr()

    assert main([str(export_file)]) == 0
    out, err = capsys.readouterr()
    assert "warning: no --key given" in err

    forked = tmp_path / "forked.checkpoint"
    forked.write_text(FORKED_CHECKPOINT, encoding="utf-8")
    assert main([str(export_file), "--key", VKEY, "--previous", str(forked)]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == f"FAIL: not consistent with previous checkpoint (size {PREV})" and out == ""

    assert main([str(tmp_path / "missing.jsonl"), "--key", VKEY]) == 2
    assert "cannot read" in capsys.readouterr().err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "audit.verify", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_subprocess_accepts_genuine_and_rejects_tampering(export_file: Path, tmp_path: Path) -> None:
    ok = _cli(str(export_file), "--key", VKEY)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK: {N} entries")

    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(
        set_entry(export_file.read_text(encoding="utf-8"), 17, lambda e: e.update(reason="edited")), encoding="utf-8"
    )
    bad = _cli(str(tampered), "--key", VKEY)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "FAIL: entry 17 changed: root mismatch"

    forged = tmp_path / "forged.jsonl"
    forged.write_text(export_text(GENUINE, key=EVIL_KEY, vkey=EVIL_VKEY), encoding="utf-8")
    res = _cli(str(forged), "--key", VKEY)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == "FAIL: checkpoint signature invalid"
    assert "header names a different verifier key" in res.stderr

    prev = tmp_path / "forked.checkpoint"
    prev.write_text(FORKED_CHECKPOINT, encoding="utf-8")
    res = _cli(str(export_file), "--key", VKEY, "--previous", str(prev))
    assert res.returncode == 1
    assert res.stderr.strip() == f"FAIL: not consistent with previous checkpoint (size {PREV})"

    good_prev = tmp_path / "good.checkpoint"
    good_prev.write_bytes(PREV_CHECKPOINT.replace("\n", "\r\n").encode() + b"\r\n")  # saved on Windows
    res = _cli(str(export_file), "--key", VKEY, "--previous", str(good_prev))
    assert res.returncode == 0, res.stderr


def _removed(lines: list[str]) -> list[str]:
    return lines[:18] + lines[19:]


def _reordered(lines: list[str]) -> list[str]:
    return [*lines[:18], lines[19], lines[18], *lines[20:]]


def _inserted(lines: list[str]) -> list[str]:
    return [*lines[:18], lines[18], *lines[18:]]


def _truncated(lines: list[str]) -> list[str]:
    return lines[:-1]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (_removed, "FAIL: entry 17 missing: line 19 holds entry 18"),
        (_reordered, "FAIL: entry 17 missing: line 19 holds entry 18"),
        (_inserted, "FAIL: entry 17 out of order or duplicated at line 20 (expected entry 18)"),
        (
            _truncated,
            f"FAIL: entry {N - 1} missing: the export ends there but the signed checkpoint covers {N} entries",
        ),
    ],
)
def test_cli_subprocess_rejects_structural_tampering(
    export_file: Path, tmp_path: Path, mangle: Callable[[list[str]], list[str]], reason: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(mangle(lines_of(export_file.read_text(encoding="utf-8")))), encoding="utf-8")
    res = _cli(str(bad), "--key", VKEY)
    assert res.returncode == 1
    assert res.stderr.strip() == reason


@pytest.mark.parametrize("module", ["audit.verify", "audit.witness"])
def test_verifier_does_not_import_django(module: str) -> None:
    code = f"import sys, {module}; sys.exit(1 if any(m.split('.')[0] == 'django' for m in sys.modules) else 0)"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=60, check=False)
    assert res.returncode == 0


def test_entry_leaf_hash_matches_what_the_verifier_hashes() -> None:
    store = merkle.MemoryNodeStore()
    for e in GENUINE:
        store.append_hash(entry_leaf_hash(e))
    text = export_text(GENUINE)
    assert verify_export(io.BytesIO(text.encode()), key=VKEY).root == store.root()
