"""Rate limits: fixed-window counters, one cache round trip per request, failing open.

DRF's stock throttles keep every request's timestamp of the window in one cache value and rewrite
it on each request, so their cost grows with the allowed rate. These count instead: a counter per
client and window (a key named after the current window; Redis in production), with the same rate
strings (``"600/min"``) and the same 429 answer (``Retry-After`` = rest of the window).

**One round trip, one command.** DRF asks every throttle of a view in turn (and all of them, even
after one refuses). The first of them to be asked counts for all its siblings that share its
cache: on Redis one Lua script (``EVALSHA``; loaded once per server) that increments every
counter and sets the expiry of a counter it has just created, atomically (a counter never lives
without one); the others read the result from the request. The relay's two limits (per
credential, per address) cost one command per request (they cost six round trips with Django's
``add`` and ``incr``, then a pipeline of four commands); caches other than Redis (per-process
memory in tests) count with ``add``/``incr``.

**One client per process.** The redis-py client and its script are made once per cache backend
(per process and cache connection) and kept: building a ``redis.Redis`` is not free (its
callbacks, its connection pool lookup) and it is safe to share between threads (connections come
from its pool).

The counters are a protection against abuse, not a correctness rule. If Redis restarts, refusing
every request with a 500 would turn a cache outage into a platform outage, so for the duration of
the outage requests are let through and the failure is logged (once per process per minute).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any, cast

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache import cache as default_cache
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache
from django.utils.connection import ConnectionProxy
from rest_framework.request import Request
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)
_last_warning = 0.0
# Where a request keeps the counts of its throttles (counted once, read by each).
_COUNTS_ATTR = "_ecard_throttle_counts"
# The counting script (on its redis-py client) of each Redis cache backend's client factory.
_scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


# KEYS: the counters; ARGV: their time to live, seconds. Returns the new counts, in order.
COUNT_WINDOWS_LUA = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then
    redis.call('EXPIRE', key, ARGV[i])
  end
end
return counts
"""


def _counting_script(cache: RedisCache) -> Any:
    """The counting script on the redis-py client for ``cache`` (``EVALSHA``, loaded on the first
    ``NOSCRIPT``), made on first use and kept for the backend's lifetime."""
    # Django's RedisCache keeps its redis-py client factory private (and untyped in the stubs).
    factory = cast(Any, cache)._cache
    script = _scripts.get(factory)
    if script is None:
        script = _scripts[factory] = factory.get_client(write=True).register_script(COUNT_WINDOWS_LUA)
    return script


def count_windows(cache: BaseCache, counters: Sequence[tuple[str, int]]) -> list[int]:
    """Add one to each ``(counter, ttl seconds)`` and return the new counts: one command on Redis
    (:data:`COUNT_WINDOWS_LUA`)."""
    if isinstance(cache, ConnectionProxy):  # django.core.cache.cache: the default alias's backend
        cache = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(cache, RedisCache):
        keys = [cache.make_and_validate_key(counter) for counter, _ttl in counters]
        replies = _counting_script(cache)(keys=keys, args=[ttl for _counter, ttl in counters])
        return [int(n) for n in replies]
    counts = []
    for counter, ttl in counters:
        try:
            counts.append(1 if cache.add(counter, 1, ttl) else cache.incr(counter))
        except ValueError:  # expired between add and incr
            counts.append(1)
    return counts


def _warn_unavailable(exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning > 60:
        _last_warning = now
        logger.warning("rate-limit cache unavailable (%s): requests are not throttled", type(exc).__name__)


class FixedWindowMixin:
    """Replace the sliding history with a counter per window (same rate syntax, same 429)."""

    cache: BaseCache = default_cache

    def window_counter(self, request: Request, view: Any, now: float) -> tuple[str, int] | None:
        """This throttle's ``(counter key, ttl)`` for the window of ``now``; None if it does not apply."""
        throttle: Any = self
        if throttle.rate is None:
            return None
        key = throttle.get_cache_key(request, view)
        if key is None:
            return None
        window = int(now // throttle.duration)
        self._window_end = (window + 1) * throttle.duration
        self._now = now
        return f"{key}:w{window}", int(throttle.duration) + 1

    def allow_request(self, request: Request, view: Any) -> bool:
        throttle: Any = self
        now = time.time()
        mine = self.window_counter(request, view, now)
        if mine is None:
            return True
        counts: dict[tuple[int, str], int | None] = request.__dict__.setdefault(_COUNTS_ATTR, {})
        slot = (id(self.cache), mine[0])
        if slot not in counts:
            batch = [mine, *self._siblings(request, view, now)]
            try:
                values: list[int | None] = list(count_windows(self.cache, batch))
            except Exception as exc:
                _warn_unavailable(exc)
                values = [None] * len(batch)
            for (counter, _ttl), value in zip(batch, values, strict=True):
                counts.setdefault((id(self.cache), counter), value)
        count = counts[slot]
        return count is None or count <= throttle.num_requests

    def _siblings(self, request: Request, view: Any, now: float) -> list[tuple[str, int]]:
        """The counters of the view's other fixed-window throttles on the same cache."""
        get_throttles = getattr(view, "get_throttles", None)
        if get_throttles is None:
            return []
        found = []
        for other in get_throttles():
            if type(other) is type(self) or not isinstance(other, FixedWindowMixin) or other.cache is not self.cache:
                continue
            counter = other.window_counter(request, view, now)
            if counter is not None:
                found.append(counter)
        return found

    def wait(self) -> float | None:
        end = getattr(self, "_window_end", None)
        if end is None:
            return None
        return max(end - getattr(self, "_now", time.time()), 1.0)


class FailOpenUserRateThrottle(FixedWindowMixin, UserRateThrottle):
    pass


class FailOpenAnonRateThrottle(FixedWindowMixin, AnonRateThrottle):
    pass


class FailOpenScopedThrottle(FixedWindowMixin, SimpleRateThrottle):
    """Base for the project's own scoped throttles (the relay's)."""
