"""Home (redirects a signed-in user to their role's start page) and the regulator's page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from audit import selectors as audit_selectors
from ecard.requests import AuthenticatedHttpRequest
from issuers.roles import principal
from portal.access import home_url, regulator_required


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        target = home_url(principal(request.user))
        if target != request.path:
            return redirect(target)
    return render(request, "portal/home.html")


@regulator_required
@require_GET
def regulator(request: AuthenticatedHttpRequest) -> HttpResponse:
    size, _root = audit_selectors.current_head()
    return render(
        request,
        "portal/regulator.html",
        {
            "head_size": size,
            "latest": audit_selectors.latest_checkpoint(),
            "can_export": audit_selectors.can_export(request.user),
            "can_read_security": audit_selectors.can_read_security_events(request.user),
        },
    )
