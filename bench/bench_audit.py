"""Audit log benchmark: sustained appends per second and proof generation time at 1M entries.

    python bench/bench_audit.py --entries 5000 [--processes 1,4,8] [--proof-size 1000000] [--proofs 2000]

Runs against the configured database (PostgreSQL when ``DATABASE_URL`` is set, else SQLite) in a
scratch database of its own (``<name>_bench``, created with migrations and dropped afterwards), so
the real log is never touched.

1. **Appends.** ``--entries`` appends through :func:`audit.services.record_event`, each in its own
   transaction (``with transaction.atomic(): record_event(...)``), by 1, 4, … processes at once;
   wall time from a common start. The single-process run also splits each append into
   *prepare + lock + writes* (inside ``record_event``) and *COMMIT*, and the same server's
   ceiling for a one-row ``UPDATE`` + ``COMMIT`` loop is measured, because every append is
   serialised on the log's row lock *through* its commit (WAL flush).
2. **Proofs at 1M.** The log is bulk-loaded to ``--proof-size`` entries (synthetic entries with
   canonical leaves; tree computed in Python with :class:`audit.merkle.CompactRange`, rows loaded
   with ``COPY`` — not timed). Then ``--proofs`` random inclusion proofs (random index and tree
   size) and consistency proofs are timed through :mod:`audit.selectors` (two SQL queries each:
   current size, then all nodes of the proof in one ``WHERE (level, index) IN …``), plus the
   whole API request ``GET /api/v1/audit/entries/{i}/proof?tree_size=N``. Every proof is checked
   with :func:`audit.merkle.verify_inclusion` / ``verify_consistency`` (untimed). Appends are timed
   again at that size to show they do not slow down as the log grows.

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

from django.db import connection, connections, transaction  # noqa: E402

from audit import selectors  # noqa: E402
from audit.export_format import canonical_json, make_entry  # noqa: E402
from audit.merkle import CompactRange, leaf_hash, verify_consistency, verify_inclusion  # noqa: E402
from audit.models import AuditEntry, LogState, MerkleNode  # noqa: E402
from audit.services import record_event  # noqa: E402

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
            action="bench.append", subject_type="bench", subject_id=str(i), card_cin=f"{i:016X}",
            actor_id="bench", actor_type="agent", details={"i": i, "aid": "A000000151000000"},
        )


def _worker(count: int, start: Any, done: Any, sync_off: bool) -> None:
    connections.close_all()
    if sync_off:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
    append_one(-1)  # connect and warm up before the clock starts
    start.wait()
    for i in range(count):
        append_one(i)
    done.put(count)


def appends_per_second(total: int, processes: int, *, sync_off: bool = False) -> float:
    ctx = mp.get_context("fork")
    start, done = ctx.Event(), ctx.Queue()
    per = [total // processes + (1 if w < total % processes else 0) for w in range(processes)]
    connections.close_all()
    workers = [ctx.Process(target=_worker, args=(per[w], start, done, sync_off)) for w in range(processes)]
    for w in workers:
        w.start()
    time.sleep(1.0 + 0.2 * processes)
    began = time.perf_counter()
    start.set()
    appended = sum(done.get() for _ in workers)
    elapsed = time.perf_counter() - began
    for w in workers:
        w.join()
        if w.exitcode:
            raise SystemExit(f"append worker failed with exit code {w.exitcode}")
    return appended / elapsed


def append_breakdown(n: int) -> dict[str, float]:
    """Single process: µs per append inside record_event (prepare, lock, writes) and in COMMIT."""
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
    """Where an append's time goes: client round trip, server time of the write statement, Python work."""
    import json

    from audit import services

    out: dict[str, float] = {}
    with connection.cursor() as cursor:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            samples.append(time.perf_counter() - t)
    out["round trip (SELECT 1)"] = statistics.median(samples) * 1e6

    samples = []
    compact = CompactRange()
    for i in range(n):
        t = time.perf_counter()
        row = AuditEntry(actor_type="system", action="bench.append", subject_type="bench", subject_id=str(i),
                         details={"i": i}, receipt="", reason="", card_cin="", organization_slug="",
                         actor_name="", actor_org_slug="")
        template = services._LeafTemplate(row)
        compact.append(template.leaf_hash(i, dt.datetime.now(dt.UTC)))
        json.dumps(compact.to_dict())
        samples.append(time.perf_counter() - t)
    out["Python: build, validate, hash, frontier"] = statistics.median(samples) * 1e6

    if connection.vendor == "postgresql":
        captured: dict[str, Any] = {}

        def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            if sql.startswith("WITH e AS"):
                captured["sql"], captured["params"] = sql, list(params)
            return execute(sql, params, many, context)

        samples = []
        for _ in range(min(n, 200)):
            with transaction.atomic():
                with connection.execute_wrapper(capture):
                    row = record_event(action="bench.explain", subject_type="bench", subject_id="x")
                # undo the rows (not the state) so that EXPLAIN ANALYZE can insert them again
                params = captured["params"]
                node_params = params[17:-3]
                AuditEntry.objects.filter(pk=row.pk).delete()
                for k in range(0, len(node_params), 3):
                    MerkleNode.objects.filter(level=node_params[k], index=node_params[k + 1]).delete()
                with connection.cursor() as cursor:
                    cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + captured["sql"], captured["params"])
                    plan = cursor.fetchone()[0]
                transaction.set_rollback(True)  # EXPLAIN ANALYZE re-ran the writes; drop both
            plan = json.loads(plan) if isinstance(plan, str) else plan
            samples.append(plan[0]["Execution Time"] + plan[0]["Planning Time"])
        out["server: write statement (EXPLAIN ANALYZE)"] = statistics.median(samples) * 1e3
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
        index=0, time="2026-01-01T00:00:00.000000Z", actor_type="system", actor_id=None, actor_organisation=None,
        action="bench.bulk", subject_type="bench", subject_id="bulk", organisation="agency",
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
            MerkleNode.objects.bulk_create((MerkleNode(level=lv, index=ix, hash=h) for lv, ix, h in nodes),
                                           batch_size=5000)
            AuditEntry.objects.bulk_create(
                (AuditEntry(index=i, time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), actor_type="system",
                            action="bench.bulk", subject_type="bench", subject_id="bulk",
                            organization_slug="agency", details={"bulk": True}, leaf_hash=h)
                 for i, h in enumerate(hashes)), batch_size=5000)
        LogState.objects.create(size=size, frontier=compact.to_dict())
    return compact


def _copy_postgresql(nodes: list[tuple[int, int, bytes]], hashes: list[bytes], when: str) -> None:
    raw = connection.connection  # psycopg 3
    with raw.cursor() as cursor:
        with cursor.copy('COPY audit_merklenode (level, "index", hash) FROM STDIN') as copy:
            for row in nodes:
                copy.write_row(row)
        columns = ('"index", time, actor_type, actor_name, actor_org_slug, action, subject_type, subject_id, '
                   "card_cin, organization_slug, outcome, reason, receipt, details, leaf_hash")
        with cursor.copy(f"COPY audit_auditentry ({columns}) FROM STDIN") as copy:
            for i, h in enumerate(hashes):
                copy.write_row((i, when, "system", "", "", "bench.bulk", "bench", "bulk", "", "agency", "success",
                                "", "", '{"bulk": true}', h))
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
        assert response.status_code == 200, response.content[:200]
    return {"inclusion": _ms(inclusion), "consistency": _ms(consistency), "api": _ms(api)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5000, help="appends per run (default 5000)")
    parser.add_argument("--processes", default="1,4,8", help="comma-separated process counts (default 1,4,8)")
    parser.add_argument("--proof-size", type=int, default=1_000_000, help="log size for the proof timings")
    parser.add_argument("--proofs", type=int, default=2000, help="proofs of each kind to time")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    procs = [int(p) for p in args.processes.split(",") if p]

    old_name = connection.settings_dict["NAME"]
    create_scratch_db()
    out = io.StringIO()
    try:
        info = machine()
        print(info)
        rates = {}
        for p in procs:
            rates[p] = appends_per_second(args.entries, p)
            print(f"appends, {p} process(es): {rates[p]:,.0f}/s")
        breakdown = append_breakdown(min(args.entries, 2000))
        print(f"single-process append breakdown (median µs): {breakdown}")
        profiled = profile_appends()
        profile = latency_profile()
        print(f"latency profile (median µs): {profile}")
        ceiling = commit_ceiling()
        if ceiling:
            print(f"server ceiling, one-row UPDATE + COMMIT under a row lock: {ceiling:,.0f}/s")
        async_rate = None
        if connection.vendor == "postgresql":
            async_rate = appends_per_second(args.entries, max(procs), sync_off=True)
            print(f"appends, {max(procs)} processes, synchronous_commit=off (diagnostic): {async_rate:,.0f}/s")

        t = time.perf_counter()
        bulk_load(args.proof_size)
        load_s = time.perf_counter() - t
        print(f"bulk-loaded {args.proof_size:,} entries and {2 * args.proof_size - args.proof_size.bit_count():,} "
              f"nodes in {load_s:.0f} s (not timed below)")
        proofs = time_proofs(args.proof_size, args.proofs)
        for kind, stats in proofs.items():
            print(kind, {k: round(v, 3) for k, v in stats.items()})
        big_rate = appends_per_second(args.entries, 1)
        print(f"appends at {args.proof_size:,} entries, 1 process: {big_rate:,.0f}/s")
    finally:
        drop_scratch_db(old_name)

    cmd = f"python bench/bench_audit.py --entries {args.entries} --processes {args.processes} " \
          f"--proof-size {args.proof_size} --proofs {args.proofs}"
    print(f"`{cmd}` — {info}.", file=out)
    print(file=out)
    print("**Appends** (each `record_event` in its own transaction; target ≥ 2,000/s):", file=out)
    print(file=out)
    print("| processes | appends/s |", file=out)
    print("|---:|---:|", file=out)
    for p, r in rates.items():
        print(f"| {p} | {r:,.0f} |", file=out)
    print(f"| 1, log at {args.proof_size:,} entries | {big_rate:,.0f} |", file=out)
    if async_rate:
        print(f"| {max(procs)}, `synchronous_commit=off` (diagnostic only, not durable) | {async_rate:,.0f} |",
              file=out)
    print(file=out)
    best = max([*rates.values(), big_rate])
    if best >= 2000:
        print(f"**Target met:** best {best:,.0f} appends/s.", file=out)
    else:
        verdict = (f"**Target missed** by {2000 - best:,.0f}/s: best {best:,.0f} appends/s, "
                   f"{best / 2000:.0%} of 2,000/s.")
        if ceiling:
            verdict += (f" This server's ceiling for *any* transaction serialised on one row lock through its "
                        f"commit is {ceiling:,.0f}/s (below).")
        print(verdict, file=out)
    print(file=out)
    print(f"Single process, median per append: {breakdown['total']:,.0f} µs, of which "
          f"{breakdown['record_event']:,.0f} µs in `record_event` (prepare and validate the entry, lock the "
          f"log state, hash, write entry + nodes + state) and {breakdown['commit']:,.0f} µs in `COMMIT`.", file=out)
    print("Where it goes (median µs): " + "; ".join(f"{k} {v:,.0f}" for k, v in profile.items()) + ".",
          file=out)
    print(file=out)
    print("cProfile of 1,000 single-process appends, top functions by own time (the socket waits are the "
          "round trips and the commit's flush; everything else is small):", file=out)
    print(file=out)
    print("| function | calls | µs per append | % |", file=out)
    print("|---|---:|---:|---:|", file=out)
    for name, calls, us, pct in profiled:
        print(f"| `{name}` | {calls:,} | {us:,.0f} | {pct:.0f} |", file=out)
    print(file=out)
    if ceiling:
        print(f"The same server runs the smallest possible serialised durable transaction (`SELECT … FOR UPDATE`, "
              f"one-row `UPDATE`, `COMMIT`) at {ceiling:,.0f}/s.", file=out)
    print(file=out)
    print(f"**Proofs at {args.proof_size:,} entries** (ms; {args.proofs} random index/size pairs each, every "
          f"proof verified; target < 10 ms):", file=out)
    print(file=out)
    print("| operation | p50 | p95 | p99 | max |", file=out)
    print("|---|---:|---:|---:|---:|", file=out)
    names = {
        "inclusion": "inclusion proof (`selectors.inclusion_proof_for`)",
        "consistency": "consistency proof (`selectors.consistency_proof_for`)",
        "api": "`GET /api/v1/audit/entries/{i}/proof?tree_size=N` (whole request)",
    }
    for kind, stats in proofs.items():
        print(f"| {names[kind]} | {stats['p50']:.2f} | {stats['p95']:.2f} | {stats['p99']:.2f} | "
              f"{stats['max']:.2f} |", file=out)
    worst = max(proofs["inclusion"]["p99"], proofs["consistency"]["p99"])
    print(file=out)
    print(f"**Target {'met' if worst < 10 else 'missed'}:** p99 of proof generation {worst:.2f} ms at "
          f"{args.proof_size:,} entries (< 10 ms).", file=out)
    text = out.getvalue()
    print()
    print(text)
    if not args.no_write:
        write_section(text + "\n" + ANALYSIS)
        print(f"updated {DOC}")


ANALYSIS = """\
**Reading the numbers.** Every append locks the one `LogState` row and keeps the lock until the
caller's transaction commits: that is what makes indices gapless and unique across processes
(docs/audit.md, "Audit log"). PostgreSQL releases row locks only after the commit record is
flushed to disk, so appends are serialised *through* the WAL flush and cannot be group-committed:
the rate is bounded by 1 / (flush latency + work under the lock), whatever the number of
processes. The "ceiling" line is that bound with no work at all: on this server even an empty
serialised durable transaction stays below 2,000/s, so no implementation that keeps gapless
indices assigned under a lock in the caller's transaction can reach the target here. Under the
lock an append already costs only two round trips (lock and read the state; one statement with
data-modifying CTEs that inserts the entry and its ~2 nodes and updates the frontier) and one
SHA-256; the entry is built, validated and canonicalised before the lock is taken.

The second limit is CPU: the machine has 2 vCPUs, shared during the run with other services and
test runs (the rate varied between ~430 and ~830 appends/s single-process across runs the same
day). One append costs about 1 ms of CPU between the Python process (Django transaction
handling, psycopg, entry validation ≈ 0.1 ms, hashing) and its PostgreSQL backend, so more
processes only add context switches — the `synchronous_commit=off` row (a diagnostic, not a
recommendation: it would weaken the durability of every business transaction that writes an
entry) shows that without the flush the rate does not improve on this machine. What would
reach 2,000/s: faster flushes (NVMe / battery-backed cache) and more cores, or a different
design — Trillian-style batched sequencing (the caller's transaction queues the entry; one
sequencer assigns indices to a batch and commits once), which gives up knowing the index when
the caller commits.

Proofs are O(log n): two indexed queries (log size, then every node of the proof in one
`WHERE (level, index) IN (…)`), independent of the log size. The API row adds authentication,
the visibility check on the entry and DRF rendering.
"""


if __name__ == "__main__":
    main()
