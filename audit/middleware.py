"""Records the portal's refusals in the security event log (:mod:`audit.security`).

Every 403, and every 404 on an object route (a URL with parameters: a card, a bank, an entry —
the cross-tenant probes), unless the API's exception handler already recorded it. A 404 for an
address no route matches (scanners) is not recorded. Also makes the request being served known to
services that record refusals (its client address).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audit import security


class SecurityEventMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = security.current_request.set(request)
        try:
            response = self.get_response(request)
        finally:
            security.current_request.reset(token)
        status = response.status_code
        if status in (403, 404) and not security.already_logged(request):
            match = getattr(request, "resolver_match", None)
            if match is not None and (status == 403 or match.kwargs):
                kind = security.Kind.FORBIDDEN if status == 403 else security.Kind.NOT_FOUND
                security.record(kind, request=request, status=status, reason=match.view_name or "")
        return response
