"""A task executes on a real Celery worker over the real broker and commits to the database.

Skipped only when no broker is configured (the embedded default runs tasks in-process);
``.ci/run`` configures Redis and PostgreSQL, so in CI this runs against both.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from ecard.celery import app
from updates import selectors
from updates.tasks import record_worker_heartbeat

BROKER = os.environ.get("CELERY_BROKER_URL", "")

pytestmark = [
    pytest.mark.celery_worker,
    pytest.mark.skipif(not BROKER, reason="no CELERY_BROKER_URL: tasks run in-process (embedded default)"),
]


@pytest.mark.django_db(transaction=True)
def test_task_runs_on_real_worker() -> None:
    from django.conf import settings

    assert not settings.CELERY_TASK_ALWAYS_EAGER, "a broker is configured, so the platform does not run eagerly"
    app.conf.task_always_eager = False  # the suite runs eagerly; this test must not
    try:
        token = run_heartbeat_on_worker()
    finally:
        app.conf.task_always_eager = True
    heartbeat = selectors.heartbeat_for(token)
    assert heartbeat is not None, f"the worker did not run the task through {BROKER}"
    print(f"celery task executed by a worker over {BROKER}, committed in {heartbeat._state.db}")


def run_heartbeat_on_worker() -> str:
    from celery.contrib.testing.worker import start_worker

    token = uuid.uuid4().hex
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        record_worker_heartbeat.delay(token)
        deadline = time.monotonic() + 30
        while selectors.heartbeat_for(token) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    return token
