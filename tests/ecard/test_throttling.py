"""The rate limits cost one cache command per request (ecard/throttling.py).

The relay has two limits (per credential, per address). They are counted together: one Redis
command (the counting Lua script: INCR per counter, EXPIRE on a counter it creates) per request,
whatever the number of throttles. Counted two ways: with a fake Redis client that counts what
reaches the wire (always runs), and against the real Redis of the environment (skipped when none
answers), counting the packets the client sends.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from typing import Any

import pytest
from django.core.cache.backends.redis import RedisCache

from ecard.throttling import COUNT_WINDOWS_LUA, count_windows


class FakeScript:
    """The counting script as Redis runs it: atomically, INCR each key, EXPIRE the ones it created."""

    def __init__(self, server: FakeRedis) -> None:
        self.server = server

    def __call__(self, keys: list[str], args: list[int]) -> list[int]:
        self.server.round_trips += 1
        counts = []
        for key, ttl in zip(keys, args, strict=True):
            self.server.values[key] = self.server.values.get(key, 0) + 1
            if self.server.values[key] == 1:
                self.server.ttls[key] = ttl
            counts.append(self.server.values[key])
        return counts


class FakeRedis:
    """Just what the counting script needs; any other command is a test failure."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.ttls: dict[str, int] = {}
        self.round_trips = 0
        self.clients = 0  # clients the cache's factory made (one per process and backend)

    def register_script(self, source: str) -> FakeScript:
        assert source == COUNT_WINDOWS_LUA
        return FakeScript(self)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Redis command {name}")


def fake_redis_cache(monkeypatch: pytest.MonkeyPatch) -> tuple[RedisCache, FakeRedis]:
    cache = RedisCache("redis://127.0.0.1:1/0", {"KEY_PREFIX": "t"})
    server = FakeRedis()

    def get_client(*args: Any, **kwargs: Any) -> FakeRedis:
        server.clients += 1
        return server

    monkeypatch.setattr(cache._cache, "get_client", get_client)
    return cache, server


def _relay_world(monkeypatch: pytest.MonkeyPatch, cache: Any, credential_rate: str, ip_rate: str) -> Any:
    """A relay with these rates; ``cache`` replaces the throttles' cache (None: keep the default
    cache, ``django.core.cache.cache``, as production does)."""
    from tests.otakit import build_ota_world
    from updates.apis import RelayCredentialThrottle, RelayIpThrottle

    monkeypatch.setattr(RelayCredentialThrottle, "THROTTLE_RATES", {"relay_credential": credential_rate})
    monkeypatch.setattr(RelayIpThrottle, "THROTTLE_RATES", {"relay_ip": ip_rate})
    if cache is not None:
        for throttle in (RelayCredentialThrottle, RelayIpThrottle):
            monkeypatch.setattr(throttle, "cache", cache)
    return build_ota_world()


@pytest.mark.django_db
def test_the_relay_limits_cost_one_round_trip_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from rest_framework.test import APIClient

    cache, server = fake_redis_cache(monkeypatch)
    world = _relay_world(monkeypatch, cache, "3/min", "1000/min")
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Agent {world.token}"}
    statuses = []
    for n in range(4):
        statuses.append(client.post("/api/v1/relay/sessions/", {}, format="json", **headers).status_code)
        assert server.round_trips == n + 1  # both limits, one command
    assert statuses == [201, 201, 201, 429]
    # Two counters (credential, address), each with the window's expiry set when it was created.
    assert len(server.values) == 2 and sorted(server.values.values()) == [4, 4]
    assert set(server.ttls.values()) == {61}
    assert all(key.startswith("t:1:throttle_relay_") for key in server.values)
    assert server.clients == 1  # made once, reused by the later requests


def test_count_windows_is_one_command_whatever_the_number_of_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    cache, server = fake_redis_cache(monkeypatch)
    assert count_windows(cache, [("a:w1", 2), ("b:w1", 61), ("a:w1", 2)]) == [1, 1, 2]
    assert server.round_trips == 1


def test_the_redis_client_is_made_once_per_cache_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a redis-py client per request costs CPU: one is made per backend and kept, and
    the counts still go through it (a second backend gets its own)."""
    cache, server = fake_redis_cache(monkeypatch)
    for n in range(1, 4):
        assert count_windows(cache, [("a:w1", 2)]) == [n]
    assert server.round_trips == 3 and server.clients == 1
    other, other_server = fake_redis_cache(monkeypatch)
    assert count_windows(other, [("a:w1", 2)]) == [1]
    assert other_server.round_trips == 1 and other_server.clients == 1 and server.round_trips == 3


def test_the_default_cache_proxy_reaches_the_redis_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The throttles hold ``django.core.cache.cache`` (a proxy, not a RedisCache): when the default
    cache is Redis, the script is still used (no add/incr round trips)."""
    from django.core import cache as cache_module

    from ecard import throttling

    cache, server = fake_redis_cache(monkeypatch)
    monkeypatch.setattr(throttling, "caches", {cache_module.DEFAULT_CACHE_ALIAS: cache})
    assert count_windows(cache_module.cache, [("a:w1", 2), ("b:w1", 2)]) == [1, 1]
    assert server.round_trips == 1


def _real_redis_url() -> str | None:
    broker = urllib.parse.urlsplit(os.environ.get("CELERY_BROKER_URL", "") or "redis://127.0.0.1:6379/0")
    if broker.scheme != "redis":
        return None
    url = f"redis://{broker.hostname or '127.0.0.1'}:{broker.port or 6379}/{broker.path.lstrip('/') or '0'}"
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return None
    return url


@pytest.mark.django_db
def test_against_real_redis_one_packet_per_request(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """What actually goes over the socket, wired as in production (the default cache is Redis, the
    throttles use ``django.core.cache.cache``): one rate-limit send per request (the script's
    EVALSHA), counts that hold across requests, and keys that expire."""
    import redis
    from django.core.cache import caches
    from redis.connection import AbstractConnection
    from rest_framework.test import APIClient

    url = _real_redis_url()
    if url is None:
        pytest.skip("no Redis answers (CELERY_BROKER_URL or 127.0.0.1:6379)")
    prefix = f"throttle-test-{uuid.uuid4().hex[:12]}"
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": prefix}
    }
    world = _relay_world(monkeypatch, None, "1000/min", "2/min")
    cache = caches["default"]
    assert isinstance(cache, RedisCache)
    cache._cache.get_client(write=True).ping()  # connect before counting
    count_windows(cache, [(f"warm-{prefix}", 2)])  # the server knows the script from now on
    sends: list[int] = []
    original = AbstractConnection.send_packed_command

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        # Only the rate limits' sends: the credential cache (updates) has its own GET/SET.
        packed = b"".join(bytes(part) for part in command) if isinstance(command, list | tuple) else bytes(command)
        if b"EVALSHA" in packed.upper() or b"INCR" in packed.upper() or b"EXPIRE" in packed.upper():
            sends.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Agent {world.token}", "REMOTE_ADDR": "10.9.0.1"}
    try:
        codes = []
        for n in range(3):
            codes.append(client.post("/api/v1/relay/sessions/", {}, format="json", **headers).status_code)
            assert len(sends) == n + 1
        assert codes == [201, 201, 429]
        monkeypatch.setattr(AbstractConnection, "send_packed_command", original)
        raw = redis.Redis.from_url(url)
        keys = raw.keys(f"{prefix}:*throttle_*")  # the relay's IP and credential windows
        assert len(keys) == 2
        assert all(0 < raw.ttl(key) <= 61 for key in keys)
    finally:
        raw = redis.Redis.from_url(url)
        for key in raw.keys(f"{prefix}:*"):
            raw.delete(key)
