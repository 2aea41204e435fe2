"""Rate limits: fixed-window counters that fail open when their cache is unreachable.

DRF's stock throttles keep every request's timestamp of the window in one cache value and rewrite
it on each request, so their cost grows with the allowed rate. These count instead: one atomic
``INCR`` per request on a key named after the current window (Redis in production), with the
same rate strings (``"600/min"``) and the same 429 answer (``Retry-After`` = rest of the window).

The counters are a protection against abuse, not a correctness rule. If Redis restarts, refusing
every request with a 500 would turn a cache outage into a platform outage, so for the duration of
the outage requests are let through and the failure is logged (once per process per minute).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import cache as default_cache
from rest_framework.request import Request
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)
_last_warning = 0.0


class FixedWindowMixin:
    """Replace the sliding history with a counter per window (same rate syntax, same 429)."""

    cache = default_cache

    def allow_request(self, request: Request, view: Any) -> bool:
        global _last_warning
        throttle: Any = self
        if throttle.rate is None:
            return True
        key = throttle.get_cache_key(request, view)
        if key is None:
            return True
        now = time.time()
        window = int(now // throttle.duration)
        self._window_end = (window + 1) * throttle.duration
        counter = f"{key}:w{window}"
        try:
            first = throttle.cache.add(counter, 1, int(throttle.duration) + 1)
            count = 1 if first else throttle.cache.incr(counter)
        except ValueError:  # expired between add and incr
            count = 1
        except Exception as exc:
            now_mono = time.monotonic()
            if now_mono - _last_warning > 60:
                _last_warning = now_mono
                logger.warning("rate-limit cache unavailable (%s): requests are not throttled", type(exc).__name__)
            return True
        self._now = now
        return count <= throttle.num_requests

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
