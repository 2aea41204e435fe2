"""A task for the worker-kill test: runs the real ``prepare_job`` service, then pauses (first run
only) so the test can kill the worker at a known point — before or after the transaction commits.
Loaded into test workers with ``celery worker -I tests.celery_probe``."""

from __future__ import annotations

import time
from pathlib import Path

from celery import shared_task
from django.db import transaction

from updates import services


@shared_task(name="tests.probe.prepare_then_pause", acks_late=True)
def prepare_then_pause(job_id: int, marker: str, pause: float, kill_before_commit: bool) -> bool:
    first_run = not Path(marker).exists()
    with transaction.atomic():
        generated = services.prepare_job(job_id)
        if first_run and kill_before_commit:
            Path(marker).write_text("in transaction")
            time.sleep(pause)
    if first_run and not kill_before_commit:
        Path(marker).write_text("committed")
        time.sleep(pause)
    Path(marker + ".done").write_text(str(generated))
    return generated
