"""Rate limits that fail open when their cache is unreachable.

The counters live in the cache (Redis in production). If Redis restarts, refusing every request
with a 500 would turn a cache outage into a platform outage; the limits are a protection against
abuse, not a correctness rule, so for the duration of the outage requests are let through and the
failure is logged (once per process per minute).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)
_last_warning = 0.0


class FailOpenMixin:
    def allow_request(self, request: Request, view: Any) -> bool:
        global _last_warning
        try:
            return super().allow_request(request, view)  # type: ignore[misc]
        except Exception as exc:
            now = time.monotonic()
            if now - _last_warning > 60:
                _last_warning = now
                logger.warning("rate-limit cache unavailable (%s): requests are not throttled", type(exc).__name__)
            return True


class FailOpenUserRateThrottle(FailOpenMixin, UserRateThrottle):
    pass


class FailOpenAnonRateThrottle(FailOpenMixin, AnonRateThrottle):
    pass


class FailOpenScopedThrottle(FailOpenMixin, SimpleRateThrottle):
    """Base for the project's own scoped throttles (the relay's)."""
