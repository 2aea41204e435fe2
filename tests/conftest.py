"""Project-wide test configuration."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

# Learns every key the suite creates and fails the run if any appears in a response, log or audit entry.
# tests.bankservice: the bank key service fixtures (bank_service_factory, platform_identity).
pytest_plugins = ["tests.issuers.keyleak", "tests.bankservice"]

# pytest-django runs with DEBUG off, where key custody demands a real master key: give the
# test session a fresh random one (never a fixed key in the repository).
os.environ.setdefault("ECARD_MASTER_KEY", secrets.token_hex(32))


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not settings.configured:
        return []
    database = settings.DATABASES["default"]
    broker = os.environ.get("CELERY_BROKER_URL") or "none (tasks run in-process)"
    return [f"ecard: database={database['ENGINE'].rsplit('.', 1)[-1]} broker={broker}"]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Say plainly which real services the suite ran against (CI reads this)."""
    if not settings.configured:
        return
    database = settings.DATABASES["default"]
    lines = [f"database: {database['ENGINE'].rsplit('.', 1)[-1]}"]
    broker = os.environ.get("CELERY_BROKER_URL")
    lines.append(f"celery broker: {broker or 'none (in-process)'}")
    for report in terminalreporter.stats.get("passed", []):
        if "test_task_runs_on_real_worker" in report.nodeid:
            lines.append(f"celery real-worker test PASSED on {broker}")
    terminalreporter.write_sep("-", "ecard services")
    for line in lines:
        terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    # Password hashing strength is not under test; the default costs ~0.3 s per user created.
    if not settings.configured:
        return
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Emulated cards made by tests never land in the demo's var/cards/.
    import tempfile
    from pathlib import Path

    settings.ECARD_CARDS_DIR = Path(tempfile.mkdtemp(prefix="ecard-test-cards-"))
    # Nor the platform's key service client identity (pages that show it create it).
    settings.ECARD_KEYSERVICE_CLIENT_DIR = Path(tempfile.mkdtemp(prefix="ecard-test-keyservice-client-"))
    # Nor the demo banks' key service directories (tests that seed the demo set their own per test).
    settings.ECARD_KEYSERVICE_DIR = Path(tempfile.mkdtemp(prefix="ecard-test-keyservices-"))
    # Tasks queued by services run in-process in tests, so no test leaves messages on a real
    # broker; the Celery worker tests send theirs to real workers explicitly.
    from ecard.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    # One master key for the test process and every process it starts (Celery workers, servers):
    # the settings may have been loaded before this file, with the installation's generated key.
    settings.ECARD_MASTER_KEY = os.environ["ECARD_MASTER_KEY"]


@pytest.fixture
def migrator() -> Iterator[Any]:
    """A migration executor for data-migration tests. Whatever state a test migrates to, the
    database is brought back to the latest migrations afterwards, so later tests (and the live
    server of the browser tests) find every table."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    try:
        yield executor
    finally:
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.fixture
def world(db: None) -> Any:
    """The demo world (agency, banks, citizens, cards) built through the real services
    (``tests.factories.build_world``). A module needing another world defines its own."""
    from tests.factories import build_world  # late: factories import the Django apps

    return build_world()


@pytest.fixture(autouse=True)
def _fresh_channel_data_keys() -> Iterator[None]:
    """Each test starts without this process's channel-state data keys (issuers.custody.sealing):
    a test's rollback gives the next test the same organisation ids and KEK versions, which
    production never reuses, so a key remembered from an earlier test would name a KEK it no
    longer has."""
    from issuers.custody.sealing import forget_data_keys
    from updates import services

    forget_data_keys()
    services._local_credentials.clear()  # and this process's copies of looked-up credentials
    yield


@pytest.fixture
def kek_unwraps(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every unwrap the software KEK backend does (the expensive call: an HSM round trip with PKCS#11)."""
    calls: list[bytes] = []
    from issuers.keyvault import SoftwareBackend

    original = SoftwareBackend.unwrap

    def counting(self: Any, kek: Any, blob: bytes, aad: bytes) -> bytes:
        calls.append(aad)
        return original(self, kek, blob, aad)

    monkeypatch.setattr(SoftwareBackend, "unwrap", counting)
    return calls
