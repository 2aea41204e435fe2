"""Celery tasks of the updates app: thin wrappers over services."""

from __future__ import annotations

import socket

from celery import shared_task

from updates import services


@shared_task(name="updates.record_worker_heartbeat", acks_late=True)
def record_worker_heartbeat(token: str) -> str:
    """Write a heartbeat row from whichever process runs the task; returns that process's host name."""
    hostname = socket.gethostname()
    services.record_worker_heartbeat(token=token, hostname=hostname)
    return hostname
