"""End to end: real services write the log, ``manage.py audit_export`` writes the file, and the
standalone verifier (``python -m audit.verify``, a separate process without Django) accepts it,
rejects it after a row was edited in the database (naming the entry), and checks an earlier
checkpoint the regulator kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from audit import services
from audit.checkpoint import make_checkpoint
from audit.export_format import read_export
from audit.models import AuditEntry, Checkpoint
from cards import services as card_services
from issuers import custody, log_signing
from tests.factories import World

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the verifier as a regulator would: a plain interpreter, no Django settings."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "audit.verify", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def export(path: Path, *extra: str) -> Path:
    call_command("audit_export", str(path), *extra)
    return path


def test_export_of_real_services_verifies(world: World, tmp_path: Path) -> None:
    path = export(tmp_path / "log.jsonl")
    vkey = services.log_verifier_key()
    result = verify(path, "--key", vkey)
    assert result.returncode == 0, result.stderr
    n = AuditEntry.objects.count()
    assert result.stdout.startswith(f"OK: {n} entries of ecard.example/audit-log")
    (tmp_path / "vkey").write_text(vkey + "\n")
    assert verify(path, "--key", f"@{tmp_path / 'vkey'}").returncode == 0
    with path.open("rb") as fp:
        header, lines = read_export(fp)
        assert [line.index for line in lines] == list(range(n))
    assert header.checkpoint == Checkpoint.objects.latest().text and header.verifier_key == vkey


def test_tampered_row_is_detected_and_named(world: World, tmp_path: Path) -> None:
    vkey = services.log_verifier_key()
    services.make_checkpoint()
    card_services.issue_card(agency=world.agency, holder=None)  # so the header carries an earlier checkpoint
    assert verify(export(tmp_path / "good.jsonl"), "--key", vkey).returncode == 0
    victim = AuditEntry.objects.filter(action="enrollment.requested").order_by("index")[1]
    # what someone with database access might do: UPDATE audit_auditentry SET action = … WHERE index = …
    assert AuditEntry.objects.filter(index=victim.index).update(action="enrollment.cancelled") == 1
    result = verify(export(tmp_path / "bad.jsonl", "--latest"), "--key", vkey)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"FAIL: entry {victim.index} changed: root mismatch"
    # Without the stored hash hint, the earlier checkpoints in the header still narrow it down.
    stripped = tmp_path / "stripped.jsonl"
    text = (tmp_path / "bad.jsonl").read_text().splitlines(keepends=True)
    lines = [text[0]] + [
        json.dumps({k: v for k, v in json.loads(t).items() if k != "leaf_hash"}) + "\n" for t in text[1:]
    ]
    stripped.write_text("".join(lines))
    result = verify(stripped, "--key", vkey)
    assert result.returncode == 1 and "FAIL: entries " in result.stderr


def test_removed_row_and_previous_checkpoints(world: World, tmp_path: Path) -> None:
    vkey = services.log_verifier_key()
    kept = services.make_checkpoint()  # the regulator saves this one
    (tmp_path / "kept.txt").write_text(kept.text.replace("\n", "\r\n") + "\r\n")
    for _ in range(3):
        card_services.issue_card(agency=world.agency, holder=None)
    path = export(tmp_path / "grown.jsonl")
    ok = verify(path, "--key", vkey, "--previous", tmp_path / "kept.txt")
    assert ok.returncode == 0, ok.stderr
    assert f"consistent with previous checkpoint (size {kept.size})" in ok.stdout

    # A checkpoint of the same size with another root, signed with the log's own key (a split view):
    keyset = log_signing.signing_keyset()
    forged = make_checkpoint("ecard.example/audit-log", kept.size, b"\x11" * 32, custody.load_private_key(keyset))
    (tmp_path / "forged.txt").write_text(forged)
    bad = verify(path, "--key", vkey, "--previous", tmp_path / "forged.txt")
    assert bad.returncode == 1 and f"not consistent with previous checkpoint (size {kept.size})" in bad.stderr

    # A row deleted from the database: the export can no longer reach the signed size.
    AuditEntry.objects.filter(index=kept.size - 2).delete()
    with pytest.raises(services.LogCorruptError, match=f"entry {kept.size - 2} is missing"):
        export(tmp_path / "gap.jsonl", "--latest")
    assert not (tmp_path / "gap.jsonl").exists()


def test_export_command_errors_and_stdout(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CommandError):
        call_command("audit_export", str(tmp_path / "x.jsonl"), "--latest")
    call_command("audit_export", "-")
    out = capsys.readouterr().out
    assert out.startswith('{"checkpoint":') and out.count("\n") == AuditEntry.objects.count() + 1


def test_edited_files_are_rejected(world: World, tmp_path: Path) -> None:
    """The same real export with one entry removed, two swapped, one inserted, one edited in the file."""
    vkey = services.log_verifier_key()
    services.make_checkpoint()
    good = export(tmp_path / "good.jsonl")
    header, *lines = good.read_text().splitlines(keepends=True)
    assert verify(good, "--key", vkey).returncode == 0
    k = len(lines) // 2
    edited = json.loads(lines[k])
    edited["entry"]["outcome"] = "failure"
    variants = {
        "removed": lines[:k] + lines[k + 1 :],
        "reordered": [*lines[:k], lines[k + 1], lines[k], *lines[k + 2 :]],
        "inserted": [*lines[:k], lines[k - 1], *lines[k:]],
        "changed": [*lines[:k], json.dumps(edited) + "\n", *lines[k + 1 :]],
    }
    for name, body in variants.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(header + "".join(body))
        result = verify(path, "--key", vkey)
        assert result.returncode == 1, name
        assert result.stderr.strip().splitlines()[-1].startswith("FAIL: "), name
        assert f"entry {k}" in result.stderr or f"entry {k - 1}" in result.stderr, (name, result.stderr)
