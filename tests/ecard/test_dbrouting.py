"""The optional read replica (ecard/dbrouting.py): off by default; when configured, only portal page
reads outside transactions go to it, and a client that has just written reads from the primary."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction
from django.http import HttpResponse
from django.test import RequestFactory

from ecard.dbrouting import PIN_COOKIE, REPLICA, ReplicaReadsMiddleware, ReplicaRouter, replica_reads


def test_off_by_default() -> None:
    assert REPLICA not in settings.DATABASES
    assert not getattr(settings, "DATABASE_ROUTERS", [])
    assert "ecard.dbrouting.ReplicaReadsMiddleware" not in settings.MIDDLEWARE
    with replica_reads():
        assert ReplicaRouter().db_for_read(None) is None  # no replica: the primary


@pytest.fixture
def with_replica(settings: Any) -> None:
    settings.DATABASES = {**settings.DATABASES, REPLICA: dict(settings.DATABASES["default"])}


@pytest.mark.django_db
def test_router_sends_only_marked_reads_outside_transactions(with_replica: None) -> None:
    router = ReplicaRouter()
    assert router.db_for_read(None) is None
    with replica_reads():
        assert router.db_for_write(None) is None
        with transaction.atomic():
            assert router.db_for_read(None) is None  # a read that may guard a write: the primary
    # (pytest-django wraps the test in a transaction; outside one the marked read goes to the replica)
    assert router.allow_migrate(REPLICA, "cards") is False
    assert router.allow_migrate("default", "cards") is None


def test_router_outside_any_transaction(with_replica: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connections

    monkeypatch.setattr(type(connections["default"]), "in_atomic_block", False, raising=False)
    with replica_reads():
        assert ReplicaRouter().db_for_read(None) == REPLICA
    assert ReplicaRouter().db_for_read(None) is None


def test_middleware_marks_portal_gets_and_pins_writers(with_replica: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecard import dbrouting

    seen: list[bool] = []

    def view(request: Any) -> HttpResponse:
        seen.append(dbrouting._replica_reads.get())
        return HttpResponse("ok")

    middleware = ReplicaReadsMiddleware(view)
    factory = RequestFactory()
    middleware(factory.get("/cards/"))
    middleware(factory.get("/api/v1/relay/sessions/"))
    middleware(factory.get("/admin/"))
    posted = middleware(factory.post("/cards/"))
    assert seen == [True, False, False, False]
    pinned = factory.get("/cards/")
    pinned.COOKIES[PIN_COOKIE] = posted.cookies[PIN_COOKIE].value
    middleware(pinned)
    assert seen[-1] is False  # just wrote: reads its own writes on the primary
    stale = factory.get("/cards/")
    stale.COOKIES[PIN_COOKIE] = str(int(time.time()) - 1)
    middleware(stale)
    assert seen[-1] is True
