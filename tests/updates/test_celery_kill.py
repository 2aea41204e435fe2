"""A Celery worker killed in the middle of a task loses nothing: the broker delivers the task again
and its effect happens once. Real worker processes, the Redis broker, PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from audit.models import AuditEntry
from cards.models import CardJob
from ecard.celery import app
from issuers.custody_models import KeySet
from tests.factories import build_world
from tests.shared_data import PROJECT_ROOT
from updates.ota import BANK_KVN

BROKER = os.environ.get("CELERY_BROKER_URL", "")

pytestmark = [
    pytest.mark.celery_worker,
    pytest.mark.postgres,
    pytest.mark.skipif(not BROKER, reason="no CELERY_BROKER_URL: tasks run in-process (embedded default)"),
]


def worker(queue: str) -> subprocess.Popen[bytes]:
    settings = connection.settings_dict
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}",
            "CELERY_BROKER_URL": BROKER,
            "CELERY_VISIBILITY_TIMEOUT": "2",
            "CELERY_UNACKED_RESTORE_THROTTLE": "1",
            "DJANGO_SETTINGS_MODULE": "ecard.settings",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "ecard",
        "worker",
        "--pool",
        "solo",
        "-Q",
        queue,
        "-I",
        "tests.celery_probe",
        "--without-heartbeat",
        "--without-mingle",
        "--without-gossip",
        "-l",
        "info",
    ]
    return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, start_new_session=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(timeout=30)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kill_before_commit", [True, False], ids=["killed-in-transaction", "killed-before-ack"])
def test_killed_worker_loses_nothing_and_duplicates_nothing(
    kill_before_commit: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    if connection.vendor != "postgresql":
        pytest.fail("the worker-kill test needs PostgreSQL shared with the worker processes (set DATABASE_URL)")
    settings.ECARD_CARDS_DIR = tmp_path
    from updates import tasks

    monkeypatch.setattr(tasks.prepare_job, "delay", lambda *a, **k: None)  # the test sends the task itself
    world = build_world()
    from cards import services

    card = world.cards["card2"]
    enrollment = services.request_enrollment(
        card=card,
        bank=world.alpha,
        citizen=world.users["citizen2"],
        consent_text=services.consent_text_for(card, world.alpha),
        accepted=True,
    )
    job = CardJob.objects.get(enrollment=enrollment)
    sd = enrollment.security_domain
    slot = {"organization": world.alpha, "card_cin": card.cin, "sd_aid": sd.aid, "kvn": BANK_KVN[3]}
    assert not KeySet.objects.filter(**slot).exists()

    queue = f"kill-test-{uuid.uuid4().hex[:8]}"
    marker = str(tmp_path / "probe")
    first = worker(queue)
    second = None
    try:
        app.send_task("tests.probe.prepare_then_pause", args=[job.pk, marker, 60, kill_before_commit], queue=queue)
        wait_for(lambda: Path(marker).exists(), 60, "the task to reach its pause")
        stop(first, signal.SIGKILL)
        stored = KeySet.objects.filter(**slot).count()
        assert stored == (0 if kill_before_commit else 1), "the kill happened where intended"
        second = worker(queue)
        wait_for(lambda: Path(marker + ".done").exists(), 90, "the redelivered task to finish")
    finally:
        stop(first, signal.SIGKILL)
        if second is not None:
            stop(second, signal.SIGTERM)
    assert KeySet.objects.filter(**slot).count() == 1, "the effect happened exactly once"
    stored_events = AuditEntry.objects.filter(
        action="custody.key_stored", card_cin=card.cin, details__sd_aid=sd.aid, details__kvn=BANK_KVN[3]
    )
    assert stored_events.count() == 1
    print(
        f"worker killed {'inside' if kill_before_commit else 'after'} the transaction; task redelivered over "
        f"{BROKER}; bank key set stored once"
    )


def test_tasks_are_acknowledged_late() -> None:
    from updates import tasks

    assert tasks.prepare_job.acks_late and tasks.expire_idle_sessions.acks_late
    assert app.conf.task_reject_on_worker_lost is True
