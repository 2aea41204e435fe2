"""An optional read replica for the portal's pages (``ECARD_DB_REPLICA_URL``; off by default).

When set, ``settings.py`` adds a ``replica`` database, :class:`ReplicaRouter` and
:class:`ReplicaReadsMiddleware`. Only reads made while answering a portal page (GET or HEAD, not
under ``/api/`` or ``/admin/``) go to the replica: the relay, the API and every write stay on the
primary, as does any read inside a transaction (a read there may be about to guard a write).
Replication lags, so a client that has just written (any unsafe request) reads from the primary
for ``ECARD_DB_REPLICA_PIN_SECONDS`` (default 5) afterwards: a bank operator who posts a form
sees the result on the page the form redirects to. Without the setting nothing of this is
installed and every query goes to ``default``, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse

REPLICA = "replica"
PIN_COOKIE = "ecard_primary"
_replica_reads: ContextVar[bool] = ContextVar("ecard_replica_reads", default=False)


@contextmanager
def replica_reads() -> Iterator[None]:
    """Reads in this block may go to the replica (outside transactions, when one is configured)."""
    token = _replica_reads.set(True)
    try:
        yield
    finally:
        _replica_reads.reset(token)


class ReplicaRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        if not _replica_reads.get() or REPLICA not in settings.DATABASES:
            return None
        if connections["default"].in_atomic_block:
            return None
        return REPLICA

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return True  # the same data on both

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        return False if db == REPLICA else None


def pin_seconds() -> int:
    return int(getattr(settings, "ECARD_DB_REPLICA_PIN_SECONDS", 5))


class ReplicaReadsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = self.get_response(request)
            # This client reads from the primary for a few seconds (its own writes are there).
            until = int(time.time()) + pin_seconds()
            response.set_cookie(
                PIN_COOKIE, str(until), max_age=pin_seconds(), secure=request.is_secure(), httponly=True, samesite="Lax"
            )
            return response
        if request.path.startswith(("/api/", "/admin/")) or self._pinned(request):
            return self.get_response(request)
        with replica_reads():
            return self.get_response(request)

    @staticmethod
    def _pinned(request: HttpRequest) -> bool:
        try:
            return int(request.COOKIES.get(PIN_COOKIE, "0")) >= time.time()
        except ValueError:
            return False
