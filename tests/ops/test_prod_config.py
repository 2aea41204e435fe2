"""The prod-local environment (``scripts/prod_local.sh``): the deploy security check passes, HSTS is
sent over TLS only, plain HTTP is redirected, and the gunicorn settings carry the limits."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "prod_local.sh"


@pytest.fixture(scope="module")
def prod_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment prod-local runs with, its secrets and certificate generated in a temp dir."""
    var = tmp_path_factory.mktemp("prod-var")
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "LOG_FORMAT", "ECARD_MASTER_KEY"}}
    env["PROD_VAR"] = str(var)
    out = subprocess.run(
        ["bash", str(SCRIPT), "env-json"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (var / "prod.env").stat().st_mode & 0o777 == 0o600
    assert (var / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    return result


def run_django(env: dict[str, str], code: str) -> str:
    script = (
        "import django; django.setup()\n"
        "from django.test.utils import setup_test_environment; setup_test_environment()\n"
        "from django.test import Client\n" + code
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_prod_local_environment_is_production(prod_env: dict[str, str]) -> None:
    assert prod_env["DEBUG"] == "0"
    assert prod_env["LOG_FORMAT"] == "json"
    assert prod_env["SECURE_SSL_REDIRECT"] == "1"
    assert prod_env["DATABASE_URL"].startswith("postgres://") and prod_env["DATABASE_URL"].endswith("/ecard_prod")
    assert prod_env["CELERY_BROKER_URL"].endswith("/0") and prod_env["CACHE_URL"].endswith("/1")
    assert len(prod_env["SECRET_KEY"]) >= 50 and len(bytes.fromhex(prod_env["ECARD_MASTER_KEY"])) == 32
    # Throttles stay on, raised for the load bench.
    assert prod_env["ECARD_RELAY_RATE"] == "1000/s" and prod_env["ECARD_RELAY_IP_RATE"] == "10000/s"


def test_check_deploy_passes_with_the_prod_local_environment(prod_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_ROOT,
        env=prod_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hsts_over_tls_only_and_plain_http_redirected(prod_env: dict[str, str]) -> None:
    env = dict(prod_env, ALLOWED_HOSTS="testserver")
    out = run_django(
        env,
        "import json\n"
        "c = Client()\n"
        "tls = c.get('/api/v1/hsts-probe/', secure=True)\n"
        "plain = c.get('/api/v1/hsts-probe/')\n"
        "print(json.dumps({'tls': dict(tls.headers), 'plain': dict(plain.headers),\n"
        "                  'plain_status': plain.status_code}))\n",
    )
    seen = json.loads(out)
    assert seen["tls"]["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert "Content-Security-Policy" in seen["tls"]
    assert "Strict-Transport-Security" not in seen["plain"]
    assert seen["plain_status"] == 301 and seen["plain"]["Location"].startswith("https://")


def test_behind_a_tls_proxy_the_forwarded_scheme_counts(prod_env: dict[str, str]) -> None:
    env = dict(prod_env, ALLOWED_HOSTS="testserver", BEHIND_TLS_PROXY="1")
    out = run_django(
        env,
        "import json\n"
        "r = Client().get('/api/v1/hsts-probe/', HTTP_X_FORWARDED_PROTO='https')\n"
        "print(json.dumps({'status': r.status_code, 'headers': dict(r.headers)}))\n",
    )
    seen = json.loads(out)
    assert seen["status"] != 301  # not redirected: the proxy says the client used HTTPS
    assert seen["headers"]["Strict-Transport-Security"].startswith("max-age=31536000")


def test_plain_http_mode_sends_no_hsts_and_no_redirect(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "LOG_FORMAT", "ECARD_MASTER_KEY"}}
    env.update(PROD_VAR=str(tmp_path), PROD_TLS="0")
    out = subprocess.run(
        ["bash", str(SCRIPT), "env-json"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    plain = json.loads(out.stdout.strip().splitlines()[-1])
    assert plain["SECURE_SSL_REDIRECT"] == "0" and "GUNICORN_CERTFILE" not in plain
    seen = json.loads(
        run_django(
            dict(plain, ALLOWED_HOSTS="testserver"),
            "import json\nr = Client().get('/api/v1/hsts-probe/')\n"
            "print(json.dumps({'status': r.status_code, 'headers': dict(r.headers)}))\n",
        )
    )
    assert seen["status"] != 301 and "Strict-Transport-Security" not in seen["headers"]


def test_gunicorn_settings_carry_limits_and_tls(prod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "GUNICORN_BIND",
        "WEB_CONCURRENCY",
        "GUNICORN_THREADS",
        "GUNICORN_TIMEOUT",
        "GUNICORN_CERTFILE",
        "GUNICORN_KEYFILE",
    ):
        monkeypatch.setenv(key, prod_env[key])
    conf = runpy.run_path(str(PROJECT_ROOT / "ecard" / "gunicorn.conf.py"))
    assert conf["bind"] == ["127.0.0.1:8000"]
    # one web process per core (nproc: the cores this process may run on), 8 threads each
    assert conf["worker_class"] == "gthread" and conf["threads"] == 8
    assert conf["workers"] == len(os.sched_getaffinity(0))
    assert conf["timeout"] == 30 and conf["graceful_timeout"] == 30
    assert conf["limit_request_line"] <= 4094 and conf["limit_request_fields"] <= 100
    assert conf["certfile"].endswith("cert.pem") and conf["keyfile"].endswith("key.pem")
    assert conf["accesslog"] is None  # the application's JSON access line (with request id) replaces it
    assert conf["preload_app"] is True
