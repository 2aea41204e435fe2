"""Login throttling with Django's cache: failures counted per username and client address.

After ``MAX_FAILURES`` failures within ``WINDOW`` seconds the pair is refused (HTTP 429) until
the window has passed; a success clears the counter. An address that fails ``MAX_FAILURES_PER_IP``
times, whatever the usernames (credential stuffing), is refused too. The same counters guard the
second factor.
"""

from __future__ import annotations

import hashlib
import logging

from django.core.cache import cache
from django.http import HttpRequest

from ecard.client import client_address

MAX_FAILURES = 5
MAX_FAILURES_PER_IP = 50
WINDOW = 15 * 60
ANY_USER = "\0any"
logger = logging.getLogger(__name__)


def client_ip(request: HttpRequest) -> str:
    return client_address(request) or "unknown"


def _key(scope: str, username: str, ip: str) -> str:
    digest = hashlib.sha256(f"{scope}\0{username.strip().lower()}\0{ip}".encode()).hexdigest()
    return f"portal:ratelimit:{digest}"


def blocked(scope: str, username: str, request: HttpRequest) -> bool:
    """Whether this username+address (or address) is refused. With the cache unreachable the
    throttle fails open (logged), like the API's rate limits: a Redis restart is not an outage."""
    ip = client_ip(request)
    try:
        return (
            int(cache.get(_key(scope, username, ip), 0)) >= MAX_FAILURES
            or int(cache.get(_key(scope, ANY_USER, ip), 0)) >= MAX_FAILURES_PER_IP
        )
    except Exception as exc:
        logger.warning("login throttle cache unavailable (%s): not throttling", type(exc).__name__)
        return False


def _incr(key: str) -> int:
    if cache.add(key, 1, WINDOW):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, WINDOW)
        return 1


def record_failure(scope: str, username: str, request: HttpRequest) -> bool:
    """Count a failure; True when the caller is now blocked."""
    ip = client_ip(request)
    try:
        per_user = _incr(_key(scope, username, ip))
        per_ip = _incr(_key(scope, ANY_USER, ip))
    except Exception as exc:
        logger.warning("login throttle cache unavailable (%s): failure not counted", type(exc).__name__)
        return False
    return per_user >= MAX_FAILURES or per_ip >= MAX_FAILURES_PER_IP


def reset(scope: str, username: str, request: HttpRequest) -> None:
    try:
        cache.delete(_key(scope, username, client_ip(request)))
    except Exception as exc:
        logger.warning("login throttle cache unavailable (%s): counter not reset", type(exc).__name__)
