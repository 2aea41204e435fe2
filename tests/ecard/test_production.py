"""Production behaviour: security headers, CSP, request ids, JSON logs, relay rate limits."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from django.test import Client

from tests.shared_data import PROJECT_ROOT

PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "k3y-" + "q8Zr!x" * 10,
    "ALLOWED_HOSTS": "testserver,ecard.example",
    "SECURE_SSL_REDIRECT": "0",
}


def run_in_production(code: str) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "SECRET_KEY", "LOG_FORMAT", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    env.update(PRODUCTION_ENV)
    env["DJANGO_SETTINGS_MODULE"] = "ecard.settings"
    script = (
        "import django; django.setup()\n"
        "from django.test.utils import setup_test_environment; setup_test_environment()\n"
        "from django.test import Client\n" + code
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_production_responses_carry_the_security_headers() -> None:
    out = run_in_production(
        "import json\n"
        "r = Client().get('/healthz', secure=True)\n"
        "print(json.dumps({k: v for k, v in r.headers.items()}))\n"
    )
    headers = json.loads(out.strip().splitlines()[-1])
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
    csp = headers["Content-Security-Policy"]  # enforced, not report-only, in production
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert len(headers["X-Request-ID"]) == 32


def test_production_logs_are_json_lines_with_request_ids() -> None:
    out = run_in_production(
        "import logging, sys\n"
        "handler = logging.getLogger().handlers[0]\n"
        "handler.setStream(sys.stdout)\n"
        "Client().get('/healthz', HTTP_X_REQUEST_ID='trace-0123456789')\n"
    )
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "ecard.access"]
    assert access, out
    assert access[0]["request_id"] == "trace-0123456789"
    assert access[0]["http_status"] == 200 and access[0]["http_path"] == "/healthz"
    assert {"time", "level", "message", "duration_ms"} <= set(access[0])


@pytest.mark.django_db
def test_request_id_is_echoed_or_made(client: Client) -> None:
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-DEF-123456").headers["X-Request-ID"] == "abc-DEF-123456"
    made = client.get("/healthz", HTTP_X_REQUEST_ID="bad id with spaces <script>").headers["X-Request-ID"]
    assert len(made) == 32 and " " not in made


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    from ecard.observability import JsonFormatter

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("job",), None)
    record.request_id = "r1"
    record.card = "ABCD"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed job" and entry["card"] == "ABCD" and "ValueError: boom" in entry["exception"]


@pytest.mark.django_db
def test_relay_rate_limit_answers_429_per_credential(monkeypatch: pytest.MonkeyPatch, settings) -> None:
    from django.core.cache import cache
    from rest_framework.test import APIClient

    from tests.otakit import build_ota_world
    from updates.apis import RelayCredentialThrottle, RelayIpThrottle

    cache.clear()
    monkeypatch.setattr(RelayCredentialThrottle, "THROTTLE_RATES", {"relay_credential": "3/min"})
    monkeypatch.setattr(RelayIpThrottle, "THROTTLE_RATES", {"relay_ip": "1000/min"})
    world = build_ota_world()
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Agent {world.token}"}
    statuses = [client.post("/api/v1/relay/sessions/", {}, format="json", **headers).status_code for _ in range(4)]
    assert statuses == [201, 201, 201, 429]
    refused = client.post("/api/v1/relay/sessions/", {}, format="json", **headers)
    assert refused["Content-Type"] == "application/problem+json"
    assert int(refused["Retry-After"]) > 0
    assert refused.json()["status"] == 429
    cache.clear()


@pytest.mark.django_db
def test_relay_rate_limit_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.cache import cache
    from rest_framework.test import APIClient

    from tests.otakit import build_ota_world
    from updates.apis import RelayCredentialThrottle, RelayIpThrottle

    cache.clear()
    monkeypatch.setattr(RelayCredentialThrottle, "THROTTLE_RATES", {"relay_credential": "1000/min"})
    monkeypatch.setattr(RelayIpThrottle, "THROTTLE_RATES", {"relay_ip": "2/min"})
    world = build_ota_world()
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Agent {world.token}"}
    codes = [
        client.post("/api/v1/relay/sessions/", {}, format="json", REMOTE_ADDR=address, **headers).status_code
        for address in ("10.9.0.1", "10.9.0.1", "10.9.0.1", "10.9.0.2")
    ]
    assert codes == [201, 201, 429, 201]
    cache.clear()


@pytest.mark.django_db
def test_rate_limits_fail_open_when_their_cache_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis restart must not turn into 500s: the relay lets requests through (and logs it)."""
    from rest_framework.test import APIClient

    from tests.otakit import build_ota_world
    from updates.apis import RelayCredentialThrottle, RelayIpThrottle

    world = build_ota_world()

    class Down:
        def get(self, *args: object, **kwargs: object) -> None:
            raise ConnectionError("redis is restarting")

        set = add = incr = get

    for throttle in (RelayCredentialThrottle, RelayIpThrottle):
        monkeypatch.setattr(throttle, "cache", Down())
    response = APIClient().post("/api/v1/relay/sessions/", {}, format="json", HTTP_AUTHORIZATION=f"Agent {world.token}")
    assert response.status_code == 201


@pytest.mark.django_db
def test_a_client_written_x_forwarded_for_buys_no_fresh_rate_limit(monkeypatch: pytest.MonkeyPatch, settings) -> None:
    """DRF takes X-Forwarded-For as the client's identity unless NUM_PROXIES is set: a client
    rotating that header got a fresh budget per request. Now only trusted proxies' entries count."""
    from django.core.cache import cache
    from rest_framework.settings import api_settings
    from rest_framework.test import APIClient

    from ecard.client import client_address
    from tests.otakit import build_ota_world
    from updates.apis import RelayCredentialThrottle, RelayIpThrottle

    cache.clear()
    monkeypatch.setattr(RelayCredentialThrottle, "THROTTLE_RATES", {"relay_credential": "1000/min"})
    monkeypatch.setattr(RelayIpThrottle, "THROTTLE_RATES", {"relay_ip": "2/min"})
    assert api_settings.NUM_PROXIES == 0
    world = build_ota_world()
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Agent {world.token}", "REMOTE_ADDR": "10.9.0.1"}
    codes = [
        client.post(
            "/api/v1/relay/sessions/", {}, format="json", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}", **headers
        ).status_code
        for n in range(3)
    ]
    assert codes == [201, 201, 429]
    cache.clear()

    # Behind one trusted proxy, the client is the entry that proxy appended (the rightmost).
    from django.test import RequestFactory

    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7")
    assert client_address(request) == "10.0.0.1"
    settings.ECARD_TRUSTED_PROXIES = 1
    assert client_address(request) == "203.0.113.7"
    settings.ECARD_TRUSTED_PROXIES = 2
    assert client_address(request) == "6.6.6.6"


def test_the_login_throttle_ignores_a_client_written_x_forwarded_for(db) -> None:
    from django.test import Client

    from portal import ratelimit
    from tests.factories import make_user

    make_user("xff-victim")
    codes = []
    for n in range(ratelimit.MAX_FAILURES + 1):
        response = Client(HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").post(
            "/accounts/login/", {"username": "xff-victim", "password": "wrong"}
        )
        codes.append(response.status_code)
    assert codes[-1] == 429, codes
