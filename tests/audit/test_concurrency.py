"""Appends from several processes at once (PostgreSQL): 8 processes append 10,000 entries in all
against the test database, in transactions of 1-4 entries, about 5% of which roll back. Each
commit also tries to sequence (non-blocking), so the processes compete for the sequencer while
others insert. After a final sequencing run, indices must be exactly 0..9999 with no duplicates
and no gaps (rolled-back appends leave none), and the final root must equal a recomputation from
the stored leaves.

Run locally with ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/ecard_audit``; CI sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from audit import selectors, services
from audit.export_format import canonical_leaf_bytes, entry_leaf_hash
from audit.merkle import CompactRange, root_from_leaves
from audit.models import AuditEntry, LogState, MerkleNode

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 8
TOTAL = 10_000

CHILD = textwrap.dedent(
    """
    import os, random, sys, time
    import django
    django.setup()
    from django.db import transaction
    from audit.services import record_event

    class Abort(Exception):
        pass

    worker, count, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = random.Random(worker)
    while not os.path.exists(go):  # start together, after every process has set Django up
        time.sleep(0.005)
    done = aborted = 0
    while done < count:
        # transactions of 1-4 entries (services often write two), and now and then one that rolls back
        k = min(rng.randint(1, 4), count - done)
        abort = rng.random() < 0.05
        try:
            with transaction.atomic():
                for j in range(k):
                    record_event(
                        action="test.rolled_back" if abort else "test.concurrent", subject_type="worker",
                        subject_id=f"{worker}-{done + j}", actor_id=f"worker-{worker}", actor_type="agent",
                        details={"worker": worker, "i": done + j},
                    )
                if abort:
                    raise Abort
        except Abort:
            aborted += 1
            continue
        done += k
    print("done", worker, count, aborted)
    """
)


def _database_url() -> str:
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{quote(s['NAME'], safe='')}"


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_eight_processes_append_ten_thousand_entries(tmp_path: Path) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL=postgres://… (CI does)")
    # The children must write to pytest-django's test database (test_<name>), not the configured one.
    assert connection.settings_dict["NAME"].startswith("test_")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ecard.settings",
        "DATABASE_URL": _database_url(),
        "DEBUG": "0",
        "SECRET_KEY": "concurrency-test-" + "x" * 40,
        "PYTHONPATH": str(ROOT),
        "DB_CONN_MAX_AGE": "0",
    }
    go = tmp_path / "go"
    per = [TOTAL // PROCESSES + (1 if w < TOTAL % PROCESSES else 0) for w in range(PROCESSES)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(w), str(per[w]), str(go)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(PROCESSES)
    ]
    try:
        time.sleep(1.0)
        go.touch()
        started = time.monotonic()
        results = [child.communicate(timeout=120) for child in children]
        elapsed = time.monotonic() - started
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (out, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err[-3000:]
        assert out.startswith("done")
    left = AuditEntry.objects.filter(index__isnull=True).count()
    sequenced = services.sequence_pending()  # what the children's on-commit runs left (the beat task's job)
    assert sequenced == left
    assert not AuditEntry.objects.filter(index__isnull=True).exists()

    rows = list(AuditEntry.objects.order_by("index"))
    indices = [row.index for row in rows]
    assert len(indices) == TOTAL == len(set(indices))
    assert indices == list(range(TOTAL))
    # each (worker, i) exactly once, and each worker's appends got increasing indices
    seen: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        seen[row.details["worker"]].append(row.details["i"])
    assert {w: sorted(v) for w, v in seen.items()} == {w: list(range(per[w])) for w in range(PROCESSES)}
    assert all(v == sorted(v) for v in seen.values())
    assert len(seen) == PROCESSES
    assert not AuditEntry.objects.filter(action="test.rolled_back").exists()
    assert sum(int(out.split()[3]) for out, _err in results) > 0  # some transactions did roll back
    # the tree: recomputed from the stored leaves == stored nodes == frontier
    leaves = [canonical_leaf_bytes(row.as_entry()) for row in rows]
    expected = root_from_leaves(leaves)
    assert all(bytes(row.leaf_hash) == entry_leaf_hash(row.as_entry()) for row in rows)
    state = LogState.objects.get()
    assert state.size == TOTAL
    assert CompactRange.from_dict(state.frontier).root() == expected
    assert selectors.root_at(TOTAL) == expected
    assert MerkleNode.objects.count() == 2 * TOTAL - TOTAL.bit_count()
    print(f"{TOTAL} appends by {PROCESSES} processes in {elapsed:.1f} s ({TOTAL / elapsed:.0f}/s), {left} left pending")
