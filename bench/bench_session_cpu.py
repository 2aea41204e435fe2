"""Web-tier CPU of one card session, in process: a quick, repeatable measure for working on the
relay's hot path (issue 15), beside the full load bench (``bench_load.py`` against ``make
prod-local``), which measures every tier under concurrency.

One process runs the whole relay API through Django's test client (middleware, DRF, the engine,
the ORM and the database client) against a throwaway database (PostgreSQL when ``DATABASE_URL`` is
set, else SQLite), with the emulated card in the same process. The session is the load bench's:
identify, open SCP03 with the ISD, lock or unlock the bank's SSD, verify with GET STATUS (3 HTTP
exchanges). Queueing the job (``cards.services.request_sd_lock``) and the card's own work are timed
apart and left out: *web CPU ms/session* is the process CPU time of the relay requests alone
(``time.process_time``), not the database server's.

    python bench/bench_session_cpu.py --sessions 200 [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecard.settings")
# As `make prod-local` runs the web tier: relay throttles on (high), JSON logs, the audit log
# sequenced by Celery beat rather than after each commit.
os.environ.setdefault("ECARD_RELAY_RATE", "1000000/min")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "bench-only-" + os.urandom(16).hex())
os.environ.setdefault("ECARD_MASTER_KEY", os.urandom(32).hex())  # a throwaway database's
os.environ.setdefault("LOG_FORMAT", "json")
os.environ.setdefault("ECARD_AUDIT_SEQUENCE_ON_COMMIT", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", help="write a cProfile (wall clock) of some sessions here")
    parser.add_argument("--show-sql", action="store_true", help="print the SQL statements of one session")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    settings.ALLOWED_HOSTS = ["*"]
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        print(_run(args))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def _run(args: argparse.Namespace) -> str:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from agent.core import run_session
    from cards import services as card_services
    from cards.models import SecurityDomain
    from tests.otakit import ApiServer, build_ota_world, enroll

    world = build_ota_world()
    enroll(world)
    card = world.card_transport()
    setup = run_session(card, ApiServer(world.token))
    if not setup.ok:
        raise SystemExit(f"enrollment failed: {setup}")
    sd = SecurityDomain.objects.get(card=world.card, organization=world.bank, state=SecurityDomain.State.ACTIVE)

    card_seconds = 0.0

    class TimedCard:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def transmit(self, capdu: bytes) -> bytes:
            nonlocal card_seconds
            started = time.process_time()
            try:
                return self.inner.transmit(capdu)
            finally:
                card_seconds += time.process_time() - started

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    server = ApiServer(world.token)
    timed = TimedCard(card)

    def queue_job() -> None:
        sd.refresh_from_db()
        lock = sd.lifecycle != SecurityDomain.Lifecycle.LOCKED
        card_services.request_sd_lock(security_domain=sd, lock=lock, actor=world.operator)

    def present() -> None:
        result = run_session(timed, server)
        if not (result.ok and result.round_trips == 3):
            raise SystemExit(f"the session did not run as the bench expects: {result}")

    for _ in range(args.warmup):
        queue_job()
        present()

    # 1. CPU time (noisy on a shared machine: take the median, compare runs side by side)
    per_session: list[float] = []
    backend = _backend_pid(connection)
    queue_pg = 0.0
    pg_during = 0.0
    queue_cpu: list[float] = []
    for _ in range(args.sessions):
        before = _proc_cpu(backend)
        queue_started = time.process_time()
        queue_job()
        queue_cpu.append((time.process_time() - queue_started) * 1000)
        queued = _proc_cpu(backend)
        queue_pg += queued - before
        card_seconds = 0.0
        started = time.process_time()
        present()
        per_session.append((time.process_time() - started - card_seconds) * 1000)
        pg_during += _proc_cpu(backend) - queued
    pg_ms = pg_during * 1000 / args.sessions if backend else float("nan")

    # 2. Counts that do not depend on the machine's other load: Python function calls (cProfile's
    # count, C functions included) and SQL statements per session.
    counted = max(args.sessions // 4, 20)
    calls = statements = 0
    for _ in range(counted):
        queue_job()
        profiler = cProfile.Profile()
        with CaptureQueriesContext(connection) as captured:
            profiler.enable()
            present()
            profiler.disable()
        statements += len(captured.captured_queries)
        calls += sum(entry[1] for entry in pstats.Stats(profiler).stats.values())  # type: ignore[attr-defined]
    if args.show_sql:
        queue_job()
        with CaptureQueriesContext(connection) as captured:
            present()
        for number, query in enumerate(captured.captured_queries, 1):
            print(f"{number:3d} {query['sql'][:400]}", file=sys.stderr)
    if args.profile:
        profiler = cProfile.Profile()
        for _ in range(counted):
            queue_job()
            profiler.enable()
            present()
            profiler.disable()
        profiler.dump_stats(args.profile)
    per_session.sort()
    return (
        f"{connection.vendor}: {args.sessions} lock/unlock sessions; web CPU ms/session: "
        f"median {statistics.median(per_session):.2f}, p10 {per_session[len(per_session) // 10]:.2f}, "
        f"p90 {per_session[len(per_session) * 9 // 10]:.2f}; database backend CPU ms/session: {pg_ms:.2f}; "
        f"per session: {calls / counted:.0f} Python calls, {statements / counted:.1f} SQL statements; "
        f"queueing its job (cards.services.request_sd_lock, not in the above): CPU ms median "
        f"{statistics.median(queue_cpu):.2f}, its database backend {queue_pg * 1000 / args.sessions:.2f}"
    )


def _backend_pid(connection: Any) -> int | None:
    """The PostgreSQL backend serving this process's connection (same machine), or None."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _proc_cpu(pid: int | None) -> float:
    from bench.loadkit import proc_cpu_seconds

    return proc_cpu_seconds(pid) if pid is not None else 0.0


if __name__ == "__main__":
    main()
