"""Who is asking: the client's network address, the same for every throttle and log.

``X-Forwarded-For`` is written by whoever sends the request, so it is believed only as far as
``ECARD_TRUSTED_PROXIES`` (the number of proxies in front of the application, default 0) says:
each trusted proxy appends the address it received the request from, so the client is the N-th
entry from the right. With no trusted proxy the address is ``REMOTE_ADDR``. DRF's throttles use
the same rule (``NUM_PROXIES`` is set from the same setting).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    remote = request.META.get("REMOTE_ADDR", "") or ""
    proxies = int(getattr(settings, "ECARD_TRUSTED_PROXIES", 0))
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded:
        return remote
    addresses = [part.strip() for part in forwarded.split(",")]
    return addresses[-min(proxies, len(addresses))][:64]
