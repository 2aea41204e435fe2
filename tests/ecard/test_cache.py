"""The Redis cache backend keeps its redis-py client (ecard/cache.py): one per connection pool,
not one per operation, and otherwise behaves as Django's."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache.backends.redis import RedisCache

from ecard.cache import ReusedClientRedisCache
from tests.ecard.test_throttling import _real_redis_url


def test_one_client_per_pool_made_once() -> None:
    cache = ReusedClientRedisCache("redis://127.0.0.1:1/0", {"KEY_PREFIX": "t"})
    assert isinstance(cache, RedisCache)  # what the rate limits look for (ecard/throttling.py)
    factory = cache._cache
    first = factory.get_client(write=True)
    assert factory.get_client(write=True) is first
    assert factory.get_client("some-key") is first  # one server: reads and writes share the pool
    assert first.connection_pool is factory._get_connection_pool(True)
    # another backend (another thread's or alias's) has its own
    assert ReusedClientRedisCache("redis://127.0.0.1:1/0", {})._cache.get_client(write=True) is not first


def test_against_real_redis_values_round_trip_through_the_kept_client() -> None:
    url = _real_redis_url()
    if url is None:
        pytest.skip("no Redis answers (CELERY_BROKER_URL or 127.0.0.1:6379)")
    cache = ReusedClientRedisCache(url, {"KEY_PREFIX": f"cache-test-{uuid.uuid4().hex[:12]}"})
    try:
        cache.set("a", {"x": 1}, 10)
        assert cache.get("a") == {"x": 1}
        assert cache.add("n", 1, 10) and cache.incr("n") == 2
        assert cache.get("missing") is None
        assert len(cache._cache._clients) == 1  # every operation went through the one client
    finally:
        cache.delete_many(["a", "n"])
