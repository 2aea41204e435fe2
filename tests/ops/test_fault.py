"""Fault test of the production topology: under load, a web worker and a Celery worker are killed
(SIGKILL, by PID) and Redis is restarted without saving; nothing is lost or duplicated.

A private topology is started with ``scripts/prod_local.sh`` (gunicorn with 2 workers over TLS,
2 Celery workers, beat) on a fresh database and free port, with its own Redis databases. Ten
cards are seeded (``seed_load``), each gets a key rotation (a Celery ``prepare_job`` task), then
10 agents drive sessions for 20 s (each session: a lock or unlock of the card's bank security
domain) while the faults happen. Afterwards every card is presented once more (its unfinished
work resumes), and:

* no job is left pending or running, none failed;
* every job was queued once and done once (one ``job.queued`` and one ``job.done`` audit entry),
  and no job was reported done to two sessions;
* each card's actual lock state (its state file) is the platform's record;
* the audit log exports and verifies (``python -m audit.verify``, exit 0): no gap, no fork.

Needs PostgreSQL (``DATABASE_URL``) and Redis (``CELERY_BROKER_URL``): skipped without them, a
failure under CI. Restarting Redis affects every user of that server: only this test does it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.shared_data import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.celery_worker]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
BROKER = os.environ.get("CELERY_BROKER_URL", "")
AGENTS = 10
SECONDS = 20.0
FAULT_DB = "ecard_fault_test"


def _require_services() -> tuple[urllib.parse.SplitResult, urllib.parse.SplitResult]:
    db, broker = urllib.parse.urlsplit(DATABASE_URL), urllib.parse.urlsplit(BROKER)
    missing = []
    if db.scheme not in ("postgres", "postgresql", "pgsql"):
        missing.append("DATABASE_URL is not PostgreSQL")
    if broker.scheme != "redis":
        missing.append("CELERY_BROKER_URL is not Redis")
    if missing:
        reason = "fault test needs the real services: " + "; ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return db, broker


def _psql(db: urllib.parse.SplitResult, sql: str) -> None:
    subprocess.run(
        [
            "psql",
            "-h",
            db.hostname or "127.0.0.1",
            "-p",
            str(db.port or 5432),
            "-U",
            db.username or "postgres",
            "-d",
            "postgres",
            "-q",
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _redis_cli(broker: urllib.parse.SplitResult, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-cli", "-h", broker.hostname or "127.0.0.1", "-p", str(broker.port or 6379), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def restart_redis(broker: urllib.parse.SplitResult) -> None:
    """``SHUTDOWN NOSAVE``, then start it again as CI does (no persistence), and wait until it answers."""
    _redis_cli(broker, "shutdown", "nosave")
    _wait(lambda: _redis_cli(broker, "ping").returncode != 0, 15, "Redis to stop")
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            broker.hostname or "127.0.0.1",
            "--port",
            str(broker.port or 6379),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    _wait(lambda: _redis_cli(broker, "ping").stdout.strip() == "PONG", 30, "Redis to answer again")


def test_kill_web_and_celery_workers_and_restart_redis_under_load(tmp_path: Path) -> None:
    db, broker = _require_services()
    sys.path.insert(0, str(PROJECT_ROOT))
    from bench.loadkit import Topology, free_port

    _psql(db, f"DROP DATABASE IF EXISTS {FAULT_DB} WITH (FORCE)")
    _psql(db, f"CREATE DATABASE {FAULT_DB}")
    redis_base = f"redis://{broker.hostname or '127.0.0.1'}:{broker.port or 6379}"
    overrides = {
        "PROD_VAR": str(tmp_path / "var"),
        "PROD_PORT": str(free_port()),
        "PROD_DB": FAULT_DB,
        "PG_HOST": db.hostname or "127.0.0.1",
        "PG_PORT": str(db.port or 5432),
        "REDIS_HOST": broker.hostname or "127.0.0.1",
        "REDIS_PORT": str(broker.port or 6379),
        "CELERY_BROKER_URL_PROD": f"{redis_base}/13",
        "CACHE_URL_PROD": f"{redis_base}/14",
        "WEB_CONCURRENCY": "2",
        "ECARD_CARDS_DIR": str(tmp_path / "cards"),
        # A task whose worker died is delivered again within seconds, not the production hour.
        "CELERY_VISIBILITY_TIMEOUT": "10",
        "CELERY_UNACKED_RESTORE_THROTTLE": "1",
        "ECARD_AUDIT_CHECKPOINT_SECONDS": "5",
    }
    topology = Topology(overrides)
    tokens = tmp_path / "tokens.jsonl"
    env = dict(topology.env)
    try:
        topology.start()
        seeded = topology.manage("seed_load", "--cards", str(AGENTS), "--tokens", str(tokens))
        assert seeded.returncode == 0, seeded.stdout[-2000:] + seeded.stderr[-3000:]
        # Celery work in flight during the faults: a key rotation per card (prepare_job generates keys).
        rotate = (
            "from cards import services; from cards.models import SecurityDomain; "
            "from django.contrib.auth import get_user_model; "
            "op = get_user_model().objects.get(username='loadbank_op'); "
            "[services.request_key_rotation(security_domain=sd, actor=op) for sd in "
            "SecurityDomain.objects.filter(organization__slug='loadbank', state='active')]"
        )
        queued = topology.manage("shell", "-c", rotate)
        assert queued.returncode == 0, queued.stderr[-3000:]

        faults: list[str] = []
        load_out = tmp_path / "load.json"
        load = subprocess.Popen(
            [
                sys.executable,
                str(PROJECT_ROOT / "bench" / "loadkit.py"),
                "load",
                "--tokens",
                str(tokens),
                "--server",
                topology.base_url,
                "--agents",
                str(AGENTS),
                "--seconds",
                str(SECONDS),
                "--out",
                str(load_out),
            ],
            cwd=PROJECT_ROOT,
            env={**env, "LOG_LEVEL": "WARNING"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(load.stdout or []), daemon=True)
        reader.start()
        time.sleep(2.5 + 1.0 + 4)  # start-up, then 4 s into the window
        workers = topology.web_workers()
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        faults.append(f"web worker {workers[0]} SIGKILL")
        time.sleep(3)
        celery_pid = topology.pid("worker1")
        assert celery_pid
        os.kill(celery_pid, signal.SIGKILL)
        faults.append(f"celery worker {celery_pid} SIGKILL")
        time.sleep(3)
        restart_redis(broker)
        faults.append("redis restarted (nosave)")
        load.wait(timeout=SECONDS + 240)
        reader.join(timeout=10)
        assert load.returncode == 0, "".join(output)[-3000:]
        result = json.loads(load_out.read_text())
        print("faults:", "; ".join(faults))
        print("load:", result["summary"], "interrupted at the end:", result["interrupted"])
        print("errors during the faults (sample):", result["error_samples"][:5])
        assert result["sessions"] > 0
        # The web tier replaced the killed worker.
        _wait(lambda: len(topology.web_workers()) == 2, 30, "gunicorn to replace the killed worker")

        # Every card once more: unfinished work resumes and completes.
        drain_out = tmp_path / "drain.json"
        drained = subprocess.run(
            [
                sys.executable,
                str(PROJECT_ROOT / "bench" / "loadkit.py"),
                "drain",
                "--tokens",
                str(tokens),
                "--server",
                topology.base_url,
                "--agents",
                str(AGENTS),
                "--out",
                str(drain_out),
            ],
            cwd=PROJECT_ROOT,
            env={**env, "LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert drained.returncode == 0, drained.stdout[-2000:] + drained.stderr[-3000:]
        drain = json.loads(drain_out.read_text())
        assert drain["left"] == {}, drain
        assert not drain["errors"], drain["errors"]

        # No job lost, none duplicated; the cards are what the platform records.
        code = f"from bench.loadkit import fault_report; fault_report({str(tokens)!r})"
        report_run = topology.manage("shell", "-c", code)
        assert report_run.returncode == 0, report_run.stderr[-3000:]
        report = json.loads(report_run.stdout.strip().splitlines()[-1])
        seen_done = result["done_jobs"] + drain["done_jobs"]
        assert len(seen_done) == len(set(seen_done)), "a job was reported done to two sessions"
        all_jobs = {j["id"]: j for card in report["cards"] for j in card["jobs"]}
        assert set(seen_done) <= set(all_jobs)
        assert len(report["cards"]) == AGENTS
        for card in report["cards"]:
            assert card["open"] == [], f"card {card['cin']}: jobs left open {card['open']}"
            assert card["failed"] == [], f"card {card['cin']}: jobs failed {card['failed']}"
            kinds = [j["kind"] for j in card["jobs"]]
            assert kinds.count("rotate_keys") == 1 and kinds.count("enroll_bank") == 1, kinds
            for job_id, count in card["queued_entries"].items():
                assert count == 1, f"job {job_id} queued {count} times"
            for job_id, count in card["done_entries"].items():
                assert count == 1, f"job {job_id} done {count} times"
            assert card["record_locked"] == card["card_locked"], card
        jobs_done = sum(1 for j in all_jobs.values() if j["state"] == "done")
        print(f"jobs: {jobs_done} done exactly once over {AGENTS} cards, none open or failed")

        # The audit log: exported and verified offline, no gap.
        export = tmp_path / "audit.jsonl"
        exported = topology.manage("audit_export", str(export))
        assert exported.returncode == 0, exported.stderr[-3000:]
        verified = subprocess.run(
            [sys.executable, "-m", "audit.verify", str(export)],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        print("audit:", report["audit_size"], "entries;", (verified.stdout or verified.stderr).strip()[-200:])
    finally:
        topology.stop()
        _redis_cli(broker, "-n", "13", "flushdb")
        _redis_cli(broker, "-n", "14", "flushdb")
        _psql(db, f"DROP DATABASE IF EXISTS {FAULT_DB} WITH (FORCE)")
