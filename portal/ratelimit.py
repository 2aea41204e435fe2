"""Login throttling with Django's cache: failures counted per username and client address.

After ``MAX_FAILURES`` failures within ``WINDOW`` seconds the pair is refused (HTTP 429) until
the window has passed; a success clears the counter. The same counter guards the second factor.
"""

from __future__ import annotations

import hashlib

from django.core.cache import cache
from django.http import HttpRequest

MAX_FAILURES = 5
WINDOW = 15 * 60


def client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites it.
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _key(scope: str, username: str, ip: str) -> str:
    digest = hashlib.sha256(f"{scope}\0{username.strip().lower()}\0{ip}".encode()).hexdigest()
    return f"portal:ratelimit:{digest}"


def blocked(scope: str, username: str, request: HttpRequest) -> bool:
    return int(cache.get(_key(scope, username, client_ip(request)), 0)) >= MAX_FAILURES


def record_failure(scope: str, username: str, request: HttpRequest) -> int:
    key = _key(scope, username, client_ip(request))
    if cache.add(key, 1, WINDOW):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, WINDOW)
        return 1


def reset(scope: str, username: str, request: HttpRequest) -> None:
    cache.delete(_key(scope, username, client_ip(request)))
