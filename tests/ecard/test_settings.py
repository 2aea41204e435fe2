"""Settings come from the environment, with safe production behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.shared_data import PROJECT_ROOT


def run_django(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"}
    }
    base.update(env)
    base["DJANGO_SETTINGS_MODULE"] = "ecard.settings"
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); " + code],
        cwd=PROJECT_ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_debug_off_without_secret_key_refuses_to_start() -> None:
    result = run_django("pass", {"DEBUG": "0"})
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_debug_off_with_secret_key_starts_without_defaults() -> None:
    result = run_django(
        "from django.conf import settings as s; print(s.DEBUG, s.ALLOWED_HOSTS, s.SESSION_COOKIE_SECURE)",
        {"DEBUG": "0", "SECRET_KEY": "s" * 50, "ALLOWED_HOSTS": "ecard.example"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False ['ecard.example'] True"


def test_embedded_default_uses_sqlite_and_in_process_tasks() -> None:
    result = run_django(
        "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], s.CELERY_TASK_ALWAYS_EAGER)",
        {},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.db.backends.sqlite3 True"


def test_environment_selects_postgres_and_broker() -> None:
    result = run_django(
        "from django.conf import settings; d = settings.DATABASES['default'];"
        " print(d['ENGINE'], d['HOST'], d['NAME'], settings.CELERY_TASK_ALWAYS_EAGER, settings.CELERY_BROKER_URL)",
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/ecard", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/3"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "127.0.0.1",
        "ecard",
        "False",
        "redis://127.0.0.1:6379/3",
    ]


def test_bad_boolean_is_a_clear_error() -> None:
    result = run_django("pass", {"DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_check_deploy_has_no_errors_with_production_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    env.update(
        {
            "DEBUG": "0",
            "SECRET_KEY": "k3y-" + "q8Zr!x" * 10,
            "ALLOWED_HOSTS": "ecard.example",
            "SECURE_SSL_REDIRECT": "1",
        }
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_migrations_are_complete() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
