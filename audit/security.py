"""The security event log: refused actions, recorded where they are refused (docs/audit.md).

What is recorded, and by what:

* refused logins (portal and admin: both use the portal's login view) — Django's
  ``user_login_failed`` signal; throttled logins and refused second-factor codes — the login views;
* API credentials refused (``Token``, ``Agent``), 403s and object-route 404s of the API — the DRF
  exception handler (:func:`audit.api_errors.exception_handler`);
* 403s and object-route 404s of the portal — :class:`audit.middleware.SecurityEventMiddleware`;
* refused consents and rejected release uploads — :func:`records_refusals` on the services
  (``cards.services.request_enrollment``, ``updates.releases.create_release``), and the portal's
  forms when they refuse before the service.

Never recorded: passwords, tokens, codes, keys, query strings, request bodies. A username that
is not an account is kept as its first characters only (people type passwords into that field).

Bounded, so refusals are cheap to record and expensive to flood with: events of the same kind,
source, account, route and reason within a minute are one row with a count; a source gets at most
``ECARD_SECURITY_EVENT_ROWS_PER_SOURCE`` rows a minute and the platform
``ECARD_SECURITY_EVENT_ROWS_PER_MINUTE``; beyond that a single ``flood`` row per source counts
them, and past ``ECARD_SECURITY_EVENT_WRITES_PER_SOURCE`` events a minute a source's events only
touch the database at powers of two. Rows older than ``ECARD_SECURITY_EVENT_RETENTION_DAYS`` are
purged (Celery beat). Recording never fails the request it records.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.http import HttpRequest
from django.utils import timezone

from audit.models import SecurityEvent
from ecard import client as ecard_client
from ecard.errors import ServiceError

logger = logging.getLogger("ecard.security")
Kind = SecurityEvent.Kind
F_ = TypeVar("F_", bound=Callable[..., Any])

# The request being served (set by the middleware), so services can name the source address.
current_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "ecard_security_request", default=None
)
LOGGED_ATTR = "_ecard_security_logged"


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def client_address(request: HttpRequest | None) -> str:
    """The client's address as the throttles see it (ecard.client), or '' without a request."""
    return "" if request is None else ecard_client.client_address(request)[:64]


def safe_username(name: str) -> tuple[Any, str]:
    """(user, name to keep): an account's username as is; anything else only as a short prefix."""
    name = (name or "").strip()
    if not name:
        return None, ""
    user = get_user_model().objects.filter(username=name[:150]).first()
    if user is not None:
        return user, user.get_username()[:40]
    return None, f"?{name[:3]}…({len(name)})"


def mark_logged(request: HttpRequest | None) -> None:
    """The response to this request needs no further record (the API's handler took care of it)."""
    if request is not None:
        setattr(request, LOGGED_ATTR, True)


def already_logged(request: HttpRequest) -> bool:
    return bool(getattr(request, LOGGED_ATTR, False))


def _incr(key: str) -> int:
    try:
        if cache.add(key, 1, 120):
            return 1
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, 120)
        return 1


def _counter(key: str) -> int:
    """A per-minute counter; 1 when the cache is unavailable (then every event is written, coalesced)."""
    try:
        return _incr(key)
    except Exception as exc:
        logger.warning("security event counters unavailable (%s)", type(exc).__name__)
        return 1


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:32]


def record(
    kind: str,
    *,
    request: HttpRequest | None = None,
    user: Any = None,
    username: str = "",
    status: int | None = None,
    organization: Any = None,
    reason: str = "",
    path: str | None = None,
) -> None:
    """Record one refused action. Never raises."""
    try:
        _record(
            kind,
            request=request,
            user=user,
            username=username,
            status=status,
            organization=organization,
            reason=reason,
            path=path,
        )
    except Exception as exc:
        logger.warning("security event %s not recorded (%s)", kind, type(exc).__name__)


def _record(
    kind: str,
    *,
    request: HttpRequest | None,
    user: Any,
    username: str,
    status: int | None,
    organization: Any,
    reason: str,
    path: str | None,
) -> None:
    request = request if request is not None else current_request.get()
    if user is None and not username and request is not None and getattr(request, "user", None) is not None:
        user = request.user if request.user.is_authenticated else None
    if user is not None and getattr(user, "pk", None) is not None:
        name = user.get_username()[:40]
    else:
        user, name = safe_username(username)
    source = client_address(request)
    method = (request.method or "")[:8] if request is not None else ""
    where = (path if path is not None else (request.path if request is not None else ""))[:200]
    org = (getattr(organization, "slug", organization) or "")[:64]
    reason = (reason or "")[:200]
    logger.info(
        "refused: %s user=%s source=%s %s %s status=%s org=%s reason=%s",
        kind,
        name or "-",
        source or "-",
        method or "-",
        where or "-",
        status,
        org or "-",
        reason or "-",
    )

    now = timezone.now()
    bucket = now.replace(second=0, microsecond=0)
    minute = int(bucket.timestamp()) // 60
    per_source = _counter(f"secev:events:{source}:{minute}")
    if per_source > _setting("ECARD_SECURITY_EVENT_WRITES_PER_SOURCE", 600):
        # A flood from one source: the database hears of it at powers of two only.
        if per_source & (per_source - 1) == 0:
            _flood(source, bucket, now, total=per_source)
        return
    key = _digest(kind, source, user.pk if user is not None else name, method, where, status, org, reason)
    with transaction.atomic():
        if SecurityEvent.objects.filter(key=key, bucket=bucket).update(count=F("count") + 1, last_seen=now):
            return
    rows_source = _counter(f"secev:rows:{source}:{minute}")
    rows_all = _counter(f"secev:rows:*:{minute}")
    if rows_source > _setting("ECARD_SECURITY_EVENT_ROWS_PER_SOURCE", 30):
        _flood(source, bucket, now)
        return
    if rows_all > _setting("ECARD_SECURITY_EVENT_ROWS_PER_MINUTE", 1000):
        _flood("*", bucket, now)
        return
    try:
        with transaction.atomic():
            SecurityEvent.objects.create(
                bucket=bucket,
                first_seen=now,
                last_seen=now,
                kind=kind,
                user=user,
                username=name,
                source=source,
                method=method,
                path=where,
                status=status,
                organization_slug=org,
                reason=reason,
                key=key,
            )
    except IntegrityError:  # the same event, recorded concurrently: count it there
        with transaction.atomic():
            SecurityEvent.objects.filter(key=key, bucket=bucket).update(count=F("count") + 1, last_seen=now)


def _flood(source: str, bucket: Any, now: Any, *, total: int | None = None) -> None:
    key = _digest(Kind.FLOOD, source)
    reason = "more refusals than are recorded one by one (see count)"
    with transaction.atomic():
        changes: dict[str, Any] = {"last_seen": now}
        changes["count"] = Greatest(F("count"), total) if total is not None else F("count") + 1
        if SecurityEvent.objects.filter(key=key, bucket=bucket).update(**changes):
            return
    try:
        with transaction.atomic():
            SecurityEvent.objects.create(
                bucket=bucket,
                first_seen=now,
                last_seen=now,
                kind=Kind.FLOOD,
                source=source[:64],
                reason=reason,
                key=key,
                count=total or 1,
            )
    except IntegrityError:
        pass


def purge(*, now: Any = None) -> int:
    """Delete events older than the retention time; returns how many rows went."""
    days = _setting("ECARD_SECURITY_EVENT_RETENTION_DAYS", 90)
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = SecurityEvent.objects.filter(last_seen__lt=cutoff).delete()
    return deleted


def records_refusals(kind: str, *, actor: str, organization: str | None = None) -> Callable[[F_], F_]:
    """Decorate a service (outside its transaction): a :class:`ServiceError` it raises is recorded as
    a security event of ``kind`` after the service's transaction rolled back, then re-raised.
    ``actor`` and ``organization`` name the keyword arguments holding the user and the organisation."""

    def decorate(service: F_) -> F_:
        @functools.wraps(service)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return service(*args, **kwargs)
            except ServiceError as exc:
                mark_logged(current_request.get())  # one record for this refusal, not another for its 4xx
                record(
                    kind,
                    user=kwargs.get(actor),
                    organization=kwargs.get(organization) if organization else None,
                    reason=f"{exc.code}: {exc.message}",
                )
                raise

        return wrapper  # type: ignore[return-value]

    return decorate
