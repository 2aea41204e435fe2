"""The Redis cache backend, keeping its redis-py client instead of making one per operation.

Django's ``RedisCache`` builds a new ``redis.Redis`` for every ``get``/``set`` (its connection
pool is kept, the client object is not). Building one is not free (``Redis.__init__`` binds its
arguments through a deprecation wrapper, copies its response callbacks): on the relay it was a
few percent of the web workers' CPU, for the credential cache read of each request. This backend
makes the client once per pool (per process, thread and cache alias, as Django's cache objects
are) and reuses it; redis-py clients are safe to share (connections come from the pool), and the
pool itself is Django's, unchanged. Everything else is Django's ``RedisCache``.
"""

from __future__ import annotations

from typing import Any, cast

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class ReusedClientRedisCacheClient(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        index: int = cast(Any, self)._get_connection_pool_index(write)  # private and untyped in the stubs
        client = self._clients.get(index)
        if client is None:  # Django's: a new client on the pool of ``index``, kept from now on
            client = self._clients[index] = super().get_client(key, write=write)
        return client


class ReusedClientRedisCache(RedisCache):
    """``django.core.cache.backends.redis.RedisCache`` with one redis-py client per connection pool."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ReusedClientRedisCacheClient
