"""Models of the updates app."""

from __future__ import annotations

from django.db import models


class WorkerHeartbeat(models.Model):
    """A row written by a Celery worker: proves tasks run and commit where the web process reads."""

    token = models.CharField(max_length=64, unique=True)
    hostname = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"heartbeat {self.token} from {self.hostname}"
