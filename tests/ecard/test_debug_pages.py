"""Error pages: none of Django's debug pages under the default settings, and the secrets masked on
them when a developer turns them on (DEBUG=1)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from django.test import Client, override_settings

from ecard.debug import mask_url_secrets
from tests.shared_data import PROJECT_ROOT

PIN = "pin-4928173"
BROKER_PASSWORD = "brokerpw-Zq81"
CACHE_PASSWORD = "cachepw-Lm52"
DB_PASSWORD = "dbpw-Xr93"
BROKER_URL = f"redis://:{BROKER_PASSWORD}@redis.internal:6379/0"
CACHE_URL = f"redis://cacheuser:{CACHE_PASSWORD}@redis.internal:6379/1"
DATABASE_URL = f"postgres://ecard:{DB_PASSWORD}@db.internal:5432/ecard"
KEY_HEX = "8899aabbccddeeff0011223344556677"
SECRETS = (PIN, BROKER_PASSWORD, CACHE_PASSWORD, DB_PASSWORD, KEY_HEX, KEY_HEX.upper(), r"\x88\x99\xaa\xbb")


@override_settings(
    DEBUG=True,
    ROOT_URLCONF="tests.ecard.boom_urls",
    ECARD_PKCS11_PIN=PIN,
    CELERY_BROKER_URL=BROKER_URL,
    CACHE_URL=CACHE_URL,
    ECARD_TEST_NESTED={"LOCATION": CACHE_URL, "OPTIONS": [DATABASE_URL]},
    ECARD_TEST_KEY_HEX=KEY_HEX,
)
def test_technical_500_page_masks_secrets() -> None:
    # runserver passes the process environment in request.META: the page shows it too.
    environ = {
        "ECARD_PKCS11_PIN": PIN,
        "CELERY_BROKER_URL": BROKER_URL,
        "CACHE_URL": CACHE_URL,
        "DATABASE_URL": DATABASE_URL,
    }
    response = Client(raise_request_exception=False).get("/boom/", **environ)
    assert response.status_code == 500
    page = response.content.decode()
    assert "RuntimeError" in page and "Traceback" in page  # it is the debug page
    for secret in SECRETS:
        assert secret not in page, secret
    assert "redis.internal" in page  # the rest of the URL stays, only the password goes


def test_mask_url_secrets() -> None:
    assert mask_url_secrets("redis://:pw@h:1/0") == "redis://:********************@h:1/0"
    assert mask_url_secrets("postgres://u:p%40ss@h/db") == "postgres://u:********************@h/db"
    assert mask_url_secrets("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url_secrets("amqp://h/?password=x&v=1") == "amqp://h/?password=********************&v=1"


def run_settings(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DEBUG",
            "SECRET_KEY",
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "ECARD_MASTER_KEY",
            "ECARD_VAR_DIR",
            "ALLOWED_HOSTS",
        }
    }
    base.update(env, DJANGO_SETTINGS_MODULE="ecard.settings")
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=PROJECT_ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_default_settings_show_no_debug_page(tmp_path: Path) -> None:
    result = run_settings(
        "from django.conf import settings\n"
        "from django.test.utils import setup_test_environment; setup_test_environment()\n"
        "settings.ROOT_URLCONF = 'tests.ecard.boom_urls'\n"
        "from django.test import Client\n"
        "r = Client(raise_request_exception=False).get('/boom/')\n"
        "body = r.content.decode()\n"
        "print(settings.DEBUG, r.status_code, 'Traceback' in body or 'RuntimeError' in body)\n",
        {"ECARD_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "False 500 False"


def test_embedded_default_generates_its_secrets_once_per_install(tmp_path: Path) -> None:
    code = "from django.conf import settings as s; print(s.SECRET_KEY, s.ECARD_MASTER_KEY, s.PRODUCTION)"
    first = run_settings(code, {"ECARD_VAR_DIR": str(tmp_path)})
    again = run_settings(code, {"ECARD_VAR_DIR": str(tmp_path), "DEBUG": "1"})
    other = run_settings(code, {"ECARD_VAR_DIR": str(tmp_path / "other")})
    assert first.returncode == again.returncode == other.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout  # the demo (DEBUG=1) opens what `make seed` (no DEBUG) wrapped
    secret_key, master_key, production = first.stdout.split()
    assert len(secret_key) >= 50 and len(bytes.fromhex(master_key)) == 32 and production == "False"
    assert "insecure" not in secret_key
    assert other.stdout.split()[:2] != [secret_key, master_key]  # per installation
    path = tmp_path / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    loose = run_settings(code, {"ECARD_VAR_DIR": str(tmp_path)})
    assert loose.returncode != 0 and "chmod 600" in loose.stderr


def test_production_never_generates_a_secret(tmp_path: Path) -> None:
    result = run_settings("pass", {"DEBUG": "0", "ECARD_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0 and "SECRET_KEY must be set when DEBUG is off" in result.stderr
    result = run_settings("pass", {"DEBUG": "0", "SECRET_KEY": "s" * 50, "ECARD_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0 and "ECARD_MASTER_KEY must be set" in result.stderr
    assert not (tmp_path / "secrets.json").exists()
