"""Project-wide test configuration."""

from __future__ import annotations

import os

import pytest
from django.conf import settings


def pytest_report_header(config: pytest.Config) -> list[str]:
    database = settings.DATABASES["default"]
    broker = os.environ.get("CELERY_BROKER_URL") or "none (tasks run in-process)"
    return [f"ecard: database={database['ENGINE'].rsplit('.', 1)[-1]} broker={broker}"]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Say plainly which real services the suite ran against (CI reads this)."""
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
