"""Audit log benchmark: sustained appends per second and proof generation time at 1M entries.

    python bench/bench_audit.py --entries 5000 [--processes 1,4,8] [--proof-size 1000000] [--proofs 2000]

Runs against the configured database (PostgreSQL when ``DATABASE_URL`` is set, else SQLite) in a
scratch database of its own (``<name>_bench``, created with migrations and dropped afterwards), so
the real log is never touched.

1. **Appends.** ``--entries`` appends through :func:`audit.services.record_event`, each in its own
   transaction (``with transaction.atomic(): record_event(...)``), by 1, 4, … processes at once
   while a dedicated sequencer process runs :func:`audit.services.sequence_pending` (polling every
   100 ms; beat runs it every second); wall time from a common start; the run checks that every
   entry was sequenced. Reported: appends/s (best of ``--runs``), the lag from ``record_event`` to
   the entry's index (entries the dedicated sequencer assigned), how long the backlog took to
   drain after the last append, the sequencer's throughput from a backlog, a single-process
   breakdown and profile, and (for comparison) the server's rate for transactions serialised on
   one row lock through their commit — the previous design's bound.
2. **Proofs at 1M.** The log is bulk-loaded to ``--proof-size`` entries (synthetic entries with
   canonical leaves; tree computed in Python with :class:`audit.merkle.CompactRange`, rows loaded
   with ``COPY`` — not timed). Then ``--proofs`` random inclusion proofs (random index and tree
   size) and consistency proofs are timed through :mod:`audit.selectors` (two SQL queries each:
   current size, then all nodes of the proof in one ``WHERE (level, index) IN …``), plus the
   whole API request ``GET /api/v1/audit/entries/{i}/proof?tree_size=N``. Every proof is checked
   with :func:`audit.merkle.verify_inclusion` / ``verify_consistency`` (untimed). Appends are timed
   again at that size to show they do not slow down as the log grows.

3. **Incremental verification** (``--incremental-only`` runs just this, no database needed): a
   regulator's verifier state for a log of ``--verify-size`` entries (1M; the frontier computed from
   synthetic canonical leaves — no 1M-row database), then a range export of ``--verify-new`` (1,000)
   new real entries with a signed, witness-cosigned checkpoint; timed: ``audit.verify`` with
   ``--since STATE --witness … --quorum 1`` in-process (verify and write the new state) and as a
   ``python -m audit.verify`` process. It writes its own ``## Audit incremental verification``
   section through ``bench/benchdoc.py``.

Results replace the ``## Audit log`` section of ``docs/benchmarks.md`` (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import multiprocessing as mp
import os
import platform
import random
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecard.settings")
os.environ.setdefault("DEBUG", "0")  # no query log, production code paths
os.environ.setdefault("SECRET_KEY", secrets.token_hex(32))
os.environ.setdefault("ECARD_MASTER_KEY", secrets.token_hex(32))
os.environ.setdefault("ALLOWED_HOSTS", "testserver")

import django  # noqa: E402

django.setup()

import logging  # noqa: E402

logging.getLogger("ecard.access").setLevel(logging.WARNING)  # one line per API request would be timed too

from django.conf import settings  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from audit import selectors, services  # noqa: E402
from audit.export_format import canonical_json, make_entry  # noqa: E402
from audit.merkle import CompactRange, leaf_hash, verify_consistency, verify_inclusion  # noqa: E402
from audit.models import AuditEntry, LogState, MerkleNode  # noqa: E402
from audit.services import record_event  # noqa: E402
from gp.aids import ISD_AID  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import benchdoc  # noqa: E402
from benchdoc import require  # noqa: E402

SECTION = "## Audit log"
DOC = ROOT / "docs" / "benchmarks.md"


# --------------------------------------------------------------------------- scratch database


def create_scratch_db() -> str:
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        settings_dict["TEST"]["NAME"] = str(Path(tempfile.mkdtemp(prefix="audit-bench-")) / "bench.sqlite3")
    else:
        settings_dict["TEST"]["NAME"] = f"{settings_dict['NAME']}_bench"
    return connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)


def drop_scratch_db(old_name: str) -> None:
    connections.close_all()
    connection.creation.destroy_test_db(old_name, verbosity=0, keepdb=False)


# --------------------------------------------------------------------------- appends


def append_one(i: int) -> None:
    with transaction.atomic():
        record_event(
            action="bench.append",
            subject_type="bench",
            subject_id=str(i),
            card_cin=f"{i:016X}",
            actor_id="bench",
            actor_type="agent",
            details={"i": i, "aid": ISD_AID.hex().upper()},
        )


def _worker(count: int, start: Any, done: Any, sync_off: bool, on_commit: bool) -> None:
    connections.close_all()
    settings.ECARD_AUDIT_SEQUENCE_ON_COMMIT = on_commit
    if sync_off:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
    append_one(-1)  # connect and warm up before the clock starts
    start.wait()
    for i in range(count):
        append_one(i)
    done.put(count)


def _pending() -> int:
    return AuditEntry.objects.filter(index__isnull=True).count()


def _sequencer(start: Any, stop: Any, out: Any) -> None:
    """The dedicated sequencer (what Celery beat runs, but polling every 100 ms): sequences while the
    workers append; records each entry's lag (sequenced at − recorded at) and its own busy time."""
    connections.close_all()
    start.wait()
    lags: list[float] = []
    sequenced = batches = 0
    busy = 0.0
    while True:
        t = time.perf_counter()
        n = services.sequence_pending(limit=services.sequence_batch_size())
        busy += time.perf_counter() - t
        if n:
            now = timezone.now()
            sequenced += n
            batches += 1
            size = selectors.current_size()  # the last n indices are this call's (one batch: exactly)
            times = (
                AuditEntry.objects.filter(index__gte=size - n, index__lt=size)
                .exclude(subject_id="-1")  # the workers' warm-up appends, recorded before the clock started
                .values_list("time", flat=True)
            )
            lags += [(now - when).total_seconds() for when in times]
            if n == services.sequence_batch_size():
                continue  # a full batch: more is waiting
        elif stop.is_set() and not _pending():
            break
        time.sleep(0.1)
    out.put({"sequenced": sequenced, "batches": batches, "busy": busy, "lags": lags})


def appends_per_second(total: int, processes: int, *, sync_off: bool = False, on_commit: bool = True) -> dict[str, Any]:
    """``processes`` workers append ``total`` entries (each its own transaction) while a dedicated
    sequencer process runs. ``on_commit``: the workers also try to sequence after each commit (the
    default configuration); otherwise only the dedicated sequencer does."""
    ctx = mp.get_context("fork")
    start, stop, done, seq_out = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    per = [total // processes + (1 if w < total % processes else 0) for w in range(processes)]
    size_before = selectors.current_size()
    connections.close_all()
    workers = [ctx.Process(target=_worker, args=(per[w], start, done, sync_off, on_commit)) for w in range(processes)]
    sequencer = ctx.Process(target=_sequencer, args=(start, stop, seq_out))
    for w in [*workers, sequencer]:
        w.start()
    time.sleep(1.0 + 0.2 * processes)
    began = time.perf_counter()
    start.set()
    appended = sum(done.get() for _ in workers)
    elapsed = time.perf_counter() - began
    stop.set()
    seq = seq_out.get()
    drained = time.perf_counter() - began
    for w in [*workers, sequencer]:
        w.join()
        if w.exitcode:
            raise SystemExit(f"bench process failed with exit code {w.exitcode}")
    size = selectors.current_size()
    if _pending() or size - size_before != appended + processes:  # + the warm-up appends
        raise SystemExit(f"log grew by {size - size_before}, expected {appended + processes}")
    lags = sorted(seq["lags"]) or [0.0]
    return {
        "rate": appended / elapsed,
        "drain_s": drained - elapsed,
        "by_sequencer": seq["sequenced"],
        "batches": seq["batches"],
        "sequencer_busy": seq["busy"] / drained,
        "lag_p50": lags[len(lags) // 2] * 1e3,
        "lag_p99": lags[int(len(lags) * 0.99)] * 1e3,
        "lag_max": lags[-1] * 1e3,
    }


def sequencing_throughput(n: int) -> float:
    """Entries/s the sequencer assigns from a backlog of ``n`` committed pending entries."""
    settings.ECARD_AUDIT_SEQUENCE_ON_COMMIT = False
    try:
        for i in range(n):
            append_one(i)
    finally:
        settings.ECARD_AUDIT_SEQUENCE_ON_COMMIT = True
    t = time.perf_counter()
    done = services.sequence_pending(limit=services.sequence_batch_size())
    rate = done / (time.perf_counter() - t)
    require(done == n and not _pending(), f"sequencer placed {done} of {n} entries")
    return rate


def append_breakdown(n: int) -> dict[str, float]:
    """Single process: µs per append inside record_event (the INSERT) and in COMMIT (with the on-commit
    sequencing of the entry just committed)."""
    inside, commit, total = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        with transaction.atomic():
            t1 = time.perf_counter()
            record_event(action="bench.append", subject_type="bench", subject_id=str(i), details={"i": i})
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        inside.append(t2 - t1)
        commit.append(t3 - t2)
        total.append(t3 - t0)
    us = 1e6
    return {
        "record_event": statistics.median(inside) * us,
        "commit": statistics.median(commit) * us,
        "total": statistics.median(total) * us,
    }


def latency_profile(n: int = 1000) -> dict[str, float]:
    """Where an append's time goes: client round trip, Python work of the caller and of the sequencer."""
    from audit.export_format import entry_leaf_hash

    out: dict[str, float] = {}
    with connection.cursor() as cursor:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            samples.append(time.perf_counter() - t)
    out["round trip (SELECT 1)"] = statistics.median(samples) * 1e6

    rows = []
    samples = []
    for i in range(n):
        t = time.perf_counter()
        row = AuditEntry(
            time=dt.datetime.now(dt.UTC),
            actor_type="system",
            action="bench.append",
            subject_type="bench",
            subject_id=str(i),
            details={"i": i},
            receipt="",
            reason="",
            card_cin="",
            organization_slug="",
            actor_name="",
            actor_org_slug="",
        )
        row.as_entry(index=0)
        samples.append(time.perf_counter() - t)
        rows.append(row)
    out["caller, Python: build and validate the entry"] = statistics.median(samples) * 1e6

    samples = []
    compact = CompactRange()
    for i, row in enumerate(rows):
        t = time.perf_counter()
        row.index = i
        compact.append(entry_leaf_hash(row.as_entry()))
        samples.append(time.perf_counter() - t)
    out["sequencer, Python: canonical leaf, hash, frontier"] = statistics.median(samples) * 1e6
    return out


def profile_appends(n: int = 1000, top: int = 10) -> list[tuple[str, int, float, float]]:
    """cProfile of ``n`` single-process appends: the ``top`` functions by own time as
    ``(function, calls, µs per append own time, % of total)``."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(n):
        append_one(i)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows.append((f"{short}:{line}({name})", calls, tottime / n * 1e6, 100 * tottime / total))
    rows.sort(key=lambda r: r[2], reverse=True)
    return rows[:top]


def commit_ceiling(n: int = 2000) -> float | None:
    """The server's rate for the smallest serialised durable transaction: one-row UPDATE + COMMIT."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_ceiling (id int PRIMARY KEY, n bigint)")
        cursor.execute("INSERT INTO bench_ceiling VALUES (1, 0) ON CONFLICT DO NOTHING")
    began = time.perf_counter()
    for _ in range(n):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT n FROM bench_ceiling WHERE id = 1 FOR UPDATE")
            cursor.execute("UPDATE bench_ceiling SET n = n + 1 WHERE id = 1")
    rate = n / (time.perf_counter() - began)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_ceiling")
    return rate


# --------------------------------------------------------------------------- bulk load


def _leaf_parts() -> tuple[bytes, bytes, str]:
    entry = make_entry(
        index=0,
        time="2026-01-01T00:00:00.000000Z",
        actor_type="system",
        actor_id=None,
        actor_organisation=None,
        action="bench.bulk",
        subject_type="bench",
        subject_id="bulk",
        organisation="agency",
        details={"bulk": True},
    )
    head = canonical_json({k: entry[k] for k in ("action", "actor", "card", "details")})[:-1]
    middle = canonical_json({k: entry[k] for k in ("organisation", "outcome", "reason", "receipt", "subject")})[1:-1]
    return head, middle, entry["time"]


def bulk_load(size: int) -> CompactRange:
    """Replace the log with ``size`` synthetic entries (real canonical leaves) and all their nodes."""
    head, middle, when = _leaf_parts()
    compact = CompactRange()
    nodes: list[tuple[int, int, bytes]] = []
    hashes: list[bytes] = []
    for i in range(size):
        h = leaf_hash(head + b',"index":' + str(i).encode() + b"," + middle + b',"time":"' + when.encode() + b'"}')
        hashes.append(h)
        nodes.extend(compact.append(h))
    with transaction.atomic():
        AuditEntry.objects.all().delete()
        MerkleNode.objects.all().delete()
        LogState.objects.all().delete()
        if connection.vendor == "postgresql":
            _copy_postgresql(nodes, hashes, when)
        else:
            MerkleNode.objects.bulk_create(
                (MerkleNode(level=lv, index=ix, hash=h) for lv, ix, h in nodes), batch_size=5000
            )
            AuditEntry.objects.bulk_create(
                (
                    AuditEntry(
                        index=i,
                        time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                        actor_type="system",
                        action="bench.bulk",
                        subject_type="bench",
                        subject_id="bulk",
                        organization_slug="agency",
                        details={"bulk": True},
                        leaf_hash=h,
                    )
                    for i, h in enumerate(hashes)
                ),
                batch_size=5000,
            )
        LogState.objects.create(size=size, frontier=compact.to_dict())
    return compact


def _copy_postgresql(nodes: list[tuple[int, int, bytes]], hashes: list[bytes], when: str) -> None:
    raw = connection.connection  # psycopg 3
    with raw.cursor() as cursor:
        with cursor.copy('COPY audit_merklenode (level, "index", hash) FROM STDIN') as copy:
            for row in nodes:
                copy.write_row(row)
        columns = (
            '"index", time, actor_type, actor_name, actor_org_slug, action, subject_type, subject_id, '
            "card_cin, organization_slug, outcome, reason, receipt, details, leaf_hash"
        )
        with cursor.copy(f"COPY audit_auditentry ({columns}) FROM STDIN") as copy:
            for i, h in enumerate(hashes):
                copy.write_row(
                    (
                        i,
                        when,
                        "system",
                        "",
                        "",
                        "bench.bulk",
                        "bench",
                        "bulk",
                        "",
                        "agency",
                        "success",
                        "",
                        "",
                        '{"bulk": true}',
                        h,
                    )
                )
        cursor.execute("ANALYZE audit_merklenode")
        cursor.execute("ANALYZE audit_auditentry")


# --------------------------------------------------------------------------- proofs


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50": s[len(s) // 2] * 1e3,
        "p95": s[int(len(s) * 0.95)] * 1e3,
        "p99": s[int(len(s) * 0.99)] * 1e3,
        "max": s[-1] * 1e3,
    }


def time_proofs(size: int, count: int) -> dict[str, dict[str, float]]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from issuers.models import Membership, Organization

    rng = random.Random(9162)
    roots: dict[int, bytes] = {}

    def root(n: int) -> bytes:
        if n not in roots:
            roots[n] = selectors.root_at(n)
        return roots[n]

    inclusion, consistency, api = [], [], []
    for k in range(count):
        tree_size = size if k % 4 == 0 else rng.randint(1, size)
        index = rng.randrange(tree_size)
        t = time.perf_counter()
        proof = selectors.inclusion_proof_for(index, tree_size)
        inclusion.append(time.perf_counter() - t)
        lh = MerkleNode.objects.get(level=0, index=index).hash
        verify_inclusion(bytes(lh), index, tree_size, proof, root(tree_size))

        second = size if k % 4 == 0 else rng.randint(1, size)
        first = rng.randint(1, second)
        t = time.perf_counter()
        cproof = selectors.consistency_proof_for(first, second)
        consistency.append(time.perf_counter() - t)
        verify_consistency(first, second, root(first), root(second), cproof)
        if len(roots) > 64:
            roots.clear()

    agency = Organization.objects.create(name="Bench Agency", slug="bench-agency", kind="regulator")
    user = get_user_model().objects.create_user("bench-regulator")
    Membership.objects.create(user=user, organization=agency, role="auditor")
    client = Client()
    client.force_login(user)
    client.get("/api/v1/audit/entries/0/proof", {"tree_size": size})  # warm up (imports, URL resolver)
    for _ in range(min(count, 500)):
        index = rng.randrange(size)
        t = time.perf_counter()
        response = client.get(f"/api/v1/audit/entries/{index}/proof", {"tree_size": size})
        api.append(time.perf_counter() - t)
        require(response.status_code == 200, f"{response.status_code}: {response.content[:200]!r}")
    return {"inclusion": _ms(inclusion), "consistency": _ms(consistency), "api": _ms(api)}


# --------------------------------------------------------------------------- incremental verification

INCREMENTAL_SECTION = "## Audit incremental verification"


def incremental_verification(size: int, new: int, runs: int) -> dict[str, Any]:
    """Time ``audit.verify --since`` on ``new`` entries after a verified log of ``size`` entries."""
    import subprocess

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.checkpoint import cosign, cosigner_vkey_for, make_checkpoint, split_note, vkey_for
    from audit.export_format import ExportHeader, ExportWriter, entry_leaf_hash
    from audit.verify import VerifiedState, save_state, verify_export

    origin = "bench.example/audit-log"
    log_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    vkey = vkey_for(log_key.public_key(), origin)
    wname = "bench.example/witness"
    wvkey = cosigner_vkey_for(witness_key.public_key(), wname)

    t = time.perf_counter()
    head, middle, when = _leaf_parts()
    compact = CompactRange()
    for i in range(size):
        compact.append(
            leaf_hash(head + b',"index":' + str(i).encode() + b"," + middle + b',"time":"' + when.encode() + b'"}')
        )
    build_s = time.perf_counter() - t
    old = make_checkpoint(origin, size, compact.root(), log_key)
    state = VerifiedState(origin, size, compact.root(), list(compact.hashes), old)

    base = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    entries = [
        make_entry(
            index=size + k,
            time=base + dt.timedelta(milliseconds=k),
            actor_type="user",
            actor_id=f"op{k % 7}",
            actor_organisation="bank-a",
            action="enrollment.created",
            subject_type="enrollment",
            subject_id=str(k),
            card=f"CIN{k:08d}",
            organisation="bank-a",
            receipt=bytes([k % 256]) * 8,
            details={"step": k, "aid": ISD_AID.hex().upper()},
        )
        for k in range(new)
    ]
    grown = compact.copy()
    hints = []
    for e in entries:
        h = entry_leaf_hash(e)
        hints.append(h)
        grown.append(h)
    note = make_checkpoint(origin, size + new, grown.root(), log_key)
    note += cosign(split_note(note)[0], witness_key, wname, int(time.time()))
    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    export = tmp / "range.jsonl"
    with export.open("w", encoding="utf-8") as fp:
        writer = ExportWriter(
            fp,
            ExportHeader(origin=origin, verifier_key=vkey, checkpoint=note, start=size, frontier=list(compact.hashes)),
        )
        for e, h in zip(entries, hints, strict=True):
            writer.write_entry(e, leaf_hash=h)

    in_process: list[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        with export.open("rb") as fp:
            result = verify_export(fp, key=vkey, witnesses=[wvkey], quorum=1, since=state)
        save_state(tmp / "state-out.json", result.state)
        in_process.append(time.perf_counter() - t)
        require(result.size == size + new and result.root == grown.root(), "verification reached another tree")
    processes: list[float] = []
    for _ in range(runs):
        save_state(tmp / "state.json", state)
        t = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "audit.verify",
                str(export),
                "--key",
                vkey,
                "--witness",
                wvkey,
                "--quorum",
                "1",
                "--since",
                str(tmp / "state.json"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
            check=False,
        )
        processes.append(time.perf_counter() - t)
        require(done.returncode == 0, str(done.stderr))
    size_bytes = export.stat().st_size
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "size": size,
        "new": new,
        "build_s": build_s,
        "bytes": size_bytes,
        "in_process": in_process,
        "process": processes,
    }


def write_incremental_section(r: dict[str, Any]) -> str:
    ms = lambda xs: f"{statistics.median(xs) * 1e3:,.0f} ms (min {min(xs) * 1e3:,.0f}, max {max(xs) * 1e3:,.0f})"  # noqa: E731
    worst = max(r["process"])
    text = (
        f"`python bench/bench_audit.py --incremental-only --verify-size {r['size']} --verify-new {r['new']}` — "
        f"{benchdoc.machine_note()}.\n\n"
        f"A regulator verified the log up to {r['size']:,} entries before (its `--since` state: size, root, and "
        f"the {r['size'].bit_count()} frontier hashes; built here from synthetic canonical leaves in "
        f"{r['build_s']:.1f} s, not timed). Then {r['new']:,} new entries arrive as a range export "
        f"({r['bytes'] / 1e6:.1f} MB) under a checkpoint cosigned by one witness. Timed, {len(r['process'])} runs "
        "each (median, min, max):\n\n"
        "| what | time |\n|---|---:|\n"
        f"| `verify_export(..., since=state, witnesses=[w], quorum=1)` + writing the new state (in-process) "
        f"| {ms(r['in_process'])} |\n"
        f"| `python -m audit.verify range.jsonl --key … --witness … --quorum 1 --since state.json` "
        f"(whole process, interpreter start included) | {ms(r['process'])} |\n\n"
        f"**Target {'met' if worst < 1 else 'missed'}:** {r['new']:,} new entries of a {r['size']:,}-entry log "
        f"verified in at most {worst * 1e3:,.0f} ms as a process (< 1 s). The work is O(new entries + log n): the "
        "verifier extends the saved frontier with the new leaves and compares the result with the signed root, "
        "which also proves the new tree extends the old one; nothing before the saved size is read.\n"
    )
    return text


# --------------------------------------------------------------------------- report


def machine() -> str:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            server = f"PostgreSQL {cursor.fetchone()[0]}"
            cursor.execute("SHOW synchronous_commit")
            server += f" (synchronous_commit={cursor.fetchone()[0]}"
            cursor.execute("SHOW fsync")
            server += f", fsync={cursor.fetchone()[0]})"
    else:
        import sqlite3

        server = f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()}, {server}, {now}"


def write_section(text: str) -> None:
    body = f"{SECTION}\n\n{text.rstrip()}\n"
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    doc = pattern.sub(lambda _m: body + "\n", doc, count=1) if pattern.search(doc) else doc.rstrip() + "\n\n" + body
    DOC.write_text(doc.rstrip() + "\n")


def _rates_table(rates: dict[str, dict[str, Any]], out: io.StringIO) -> None:
    print(
        "| run | appends/s | sequenced by the dedicated sequencer | its batches | its busy share "
        "| lag p50 ms | lag p99 ms | lag max ms | backlog drained after the last append |",
        file=out,
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
    for name, r in rates.items():
        print(
            f"| {name} | {r['rate']:,.0f} | {r['by_sequencer']:,} | {r['batches']:,} | {r['sequencer_busy']:.0%} "
            f"| {r['lag_p50']:,.0f} | {r['lag_p99']:,.0f} | {r['lag_max']:,.0f} | {r['drain_s'] * 1e3:,.0f} ms |",
            file=out,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5000, help="appends per run (default 5000)")
    parser.add_argument("--processes", default="1,4,8", help="comma-separated process counts (default 1,4,8)")
    parser.add_argument("--proof-size", type=int, default=1_000_000, help="log size for the proof timings")
    parser.add_argument("--proofs", type=int, default=2000, help="proofs of each kind to time")
    parser.add_argument("--runs", type=int, default=3, help="runs of each append configuration; the best is kept")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--verify-size", type=int, default=1_000_000, help="log size already verified (1M)")
    parser.add_argument("--verify-new", type=int, default=1000, help="new entries verified incrementally (1,000)")
    parser.add_argument("--incremental-only", action="store_true", help="run only the incremental verification")
    args = parser.parse_args()
    procs = [int(p) for p in args.processes.split(",") if p]

    incremental = incremental_verification(args.verify_size, args.verify_new, runs=5)
    inc_text = write_incremental_section(incremental)
    print(inc_text)
    if not args.no_write:
        benchdoc.write_section(INCREMENTAL_SECTION, inc_text)
    if args.incremental_only:
        return

    def best_of(label: str, **kw: Any) -> dict[str, Any]:
        runs = [appends_per_second(args.entries, **kw) for _ in range(args.runs)]
        for r in runs:
            print(
                f"appends, {label}: {r['rate']:,.0f}/s, lag p50/p99/max {r['lag_p50']:.0f}/{r['lag_p99']:.0f}/"
                f"{r['lag_max']:.0f} ms, drained {r['drain_s'] * 1e3:.0f} ms after, dedicated sequencer "
                f"{r['by_sequencer']} entries in {r['batches']} batches"
            )
        best = max(runs, key=lambda r: r["rate"])
        best["all"] = [r["rate"] for r in runs]
        return best

    old_name = connection.settings_dict["NAME"]
    create_scratch_db()
    out = io.StringIO()
    try:
        info = machine()
        print(info)
        rates: dict[str, dict[str, Any]] = {}
        for p in procs:
            rates[f"{p} process(es), sequencing after commit + dedicated sequencer"] = best_of(
                f"{p} process(es)", processes=p
            )
        for p in procs[-1:]:
            rates[f"{p} processes, dedicated sequencer only (`ECARD_AUDIT_SEQUENCE_ON_COMMIT=0`)"] = best_of(
                f"{p} processes, no on-commit sequencing", processes=p, on_commit=False
            )
        throughput = sequencing_throughput(min(args.entries * 2, 20000))
        print(f"sequencer throughput from a backlog: {throughput:,.0f} entries/s")
        breakdown = append_breakdown(min(args.entries, 2000))
        print(f"single-process append breakdown (median µs): {breakdown}")
        profiled = profile_appends()
        profile = latency_profile()
        print(f"latency profile (median µs): {profile}")
        ceiling = commit_ceiling()
        if ceiling:
            print(f"server ceiling, one-row UPDATE + COMMIT under a row lock: {ceiling:,.0f}/s")

        t = time.perf_counter()
        bulk_load(args.proof_size)
        load_s = time.perf_counter() - t
        print(
            f"bulk-loaded {args.proof_size:,} entries and {2 * args.proof_size - args.proof_size.bit_count():,} "
            f"nodes in {load_s:.0f} s (not timed below)"
        )
        proofs = time_proofs(args.proof_size, args.proofs)
        for kind, stats in proofs.items():
            print(kind, {k: round(v, 3) for k, v in stats.items()})
        big = appends_per_second(args.entries, processes=procs[-1])
        rates[f"{procs[-1]} processes, log at {args.proof_size:,} entries"] = big
        print(f"appends at {args.proof_size:,} entries, {procs[-1]} processes: {big['rate']:,.0f}/s")
    finally:
        drop_scratch_db(old_name)

    cmd = (
        f"python bench/bench_audit.py --entries {args.entries} --processes {args.processes} "
        f"--proof-size {args.proof_size} --proofs {args.proofs} --runs {args.runs}"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n")[0]
        load += f", CPU pressure (some, avg60) {float(some.split('avg60=')[1].split()[0]):.0f}%"
    except (OSError, IndexError, ValueError):
        pass
    print(
        f"`{cmd}` — {info}, load average after the runs {load}. The machine is shared with other work "
        f"(other sessions' test runs and benchmarks) and noisy: each configuration ran {args.runs} times and "
        f"the best run is shown (all runs: see the notes below the table).",
        file=out,
    )
    print(file=out)
    print(
        f"**Appends** ({args.entries:,} appends per run, each `record_event` in its own transaction; target "
        "≥ 2,000/s). *lag* = time from `record_event` to the entry's index being committed, for the entries the "
        "dedicated sequencer assigned:",
        file=out,
    )
    print(file=out)
    _rates_table(rates, out)
    print(file=out)
    print(
        "All runs (appends/s): "
        + "; ".join(
            f"{name.split(',')[0]}{' (no on-commit)' if 'only' in name else ''}: "
            + ", ".join(f"{x:,.0f}" for x in r.get("all", [r["rate"]]))
            for name, r in rates.items()
        )
        + ".",
        file=out,
    )
    print(file=out)
    best = max(r["rate"] for r in rates.values())
    verdict = "met" if best >= 2000 else "missed"
    print(f"**Target {verdict}:** best {best:,.0f} appends/s.", file=out)
    print(file=out)
    print(
        f"**Sequencer throughput**: a backlog of {min(args.entries * 2, 20000):,} committed pending entries "
        f"sequenced at {throughput:,.0f} entries/s (batches of {services.sequence_batch_size():,}, one "
        "transaction each).",
        file=out,
    )
    print(file=out)
    print(
        f"Single process, median per append: {breakdown['total']:,.0f} µs, of which "
        f"{breakdown['record_event']:,.0f} µs in `record_event` (build and validate the entry, one INSERT) and "
        f"{breakdown['commit']:,.0f} µs in `COMMIT` plus the on-commit sequencing try.",
        file=out,
    )
    print("Where it goes (median µs): " + "; ".join(f"{k} {v:,.0f}" for k, v in profile.items()) + ".", file=out)
    print(file=out)
    print(
        "cProfile of 1,000 single-process appends (on-commit sequencing included), top functions by own time:", file=out
    )
    print(file=out)
    print("| function | calls | µs per append | % |", file=out)
    print("|---|---:|---:|---:|", file=out)
    for name, calls, us, pct in profiled:
        print(f"| `{name}` | {calls:,} | {us:,.0f} | {pct:.0f} |", file=out)
    print(file=out)
    if ceiling:
        print(
            f"For comparison, the same server runs transactions serialised on one row lock through their "
            f"commit (`SELECT … FOR UPDATE`, one-row `UPDATE`, `COMMIT` — the shape of the previous design's "
            f"appends) at {ceiling:,.0f}/s.",
            file=out,
        )
    print(file=out)
    print(
        f"**Proofs at {args.proof_size:,} entries** (ms; {args.proofs} random index/size pairs each, every "
        f"proof verified; target < 10 ms):",
        file=out,
    )
    print(file=out)
    print("| operation | p50 | p95 | p99 | max |", file=out)
    print("|---|---:|---:|---:|---:|", file=out)
    names = {
        "inclusion": "inclusion proof (`selectors.inclusion_proof_for`)",
        "consistency": "consistency proof (`selectors.consistency_proof_for`)",
        "api": "`GET /api/v1/audit/entries/{i}/proof?tree_size=N` (whole request, sequencing check included)",
    }
    for kind, stats in proofs.items():
        print(
            f"| {names[kind]} | {stats['p50']:.2f} | {stats['p95']:.2f} | {stats['p99']:.2f} | {stats['max']:.2f} |",
            file=out,
        )
    worst = max(proofs["inclusion"]["p99"], proofs["consistency"]["p99"])
    print(file=out)
    print(
        f"**Target {'met' if worst < 10 else 'missed'}:** p99 of proof generation {worst:.2f} ms at "
        f"{args.proof_size:,} entries (< 10 ms).",
        file=out,
    )
    text = out.getvalue()
    print()
    print(text)
    if not args.no_write:
        write_section(text + "\n" + ANALYSIS)
        print(f"updated {DOC}")


ANALYSIS = """\
**Reading the numbers.** `record_event` takes no lock: it INSERTs a pending entry (no index) in
the caller's transaction, so appending transactions commit independently and PostgreSQL flushes
concurrent commits together (group commit). One sequencer at a time (a transaction-level advisory
lock, held only for its own short transaction) gives committed pending entries the next indices
in insertion order, hashes their leaves, stores the new tree nodes and the frontier — a batch per
transaction, one statement for all its writes (docs/audit.md, "Sequencing"). After each appending
transaction commits, the process tries the lock without waiting and sequences what is pending; if
another process holds it, that one (or the next commit, or beat within a second) takes the entry.
So the appends' rate is no longer bounded by one serialised commit at a time (the "previous
design" line above), and the sequencer's cost is shared by many entries per batch.

On this 2-vCPU machine the appending processes, their PostgreSQL backends and the sequencer share
two cores with other work, so CPU is the limit: more processes help as long as commits can be
flushed together, then add only context switches.

Proofs are O(log n): two indexed queries (log size, then every node of the proof in one
`WHERE (level, index) IN (…)`), independent of the log size. The API row adds authentication,
the sequencing check before the read (one short transaction when nothing is pending), the
visibility check on the entry and DRF rendering.
"""


if __name__ == "__main__":
    main()
