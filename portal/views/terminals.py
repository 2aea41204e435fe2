"""Terminal credentials of an organisation (a bank's ATMs, the agency's kiosks): listed, issued and
revoked by the organisation's admins. Another organisation's page, or one of an organisation the
user is not an admin of, does not exist for the user (404)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from portal.forms import TerminalForm, add_service_error, posted, posted_id
from updates import selectors as update_selectors
from updates import services as update_services


@login_required
@require_http_methods(["GET", "POST"])
def terminals(request: AuthenticatedHttpRequest, org: str) -> HttpResponse:
    organization = update_selectors.terminal_organizations_for(request.user).filter(slug=org).first()
    if organization is None:
        raise Http404("no such organisation")
    form = TerminalForm(posted(request) if request.POST.get("action") != "revoke" else None)
    token = None
    if request.method == "POST" and request.POST.get("action") == "revoke":
        credential = get_object_or_404(
            update_selectors.terminal_credentials_for(request.user, organization), pk=posted_id(request)
        )
        update_services.revoke_terminal_credential(credential=credential, actor=request.user)
        messages.success(request, f"The terminal “{credential.name}” is revoked: it is refused from now on.")
        return redirect("portal:terminals", org=organization.slug)
    if request.method == "POST" and form.is_valid():
        try:
            _credential, token = update_services.issue_terminal_credential(
                organization=organization, actor=request.user, name=form.cleaned_data["name"]
            )
        except ServiceError as exc:
            add_service_error(form, exc, aliases={"organization": "name"})
        else:
            form = TerminalForm()
    response = render(
        request,
        "portal/terminals.html",
        {
            "organization": organization,
            "form": form,
            "token": token,
            "credentials": update_selectors.terminal_credentials_for(request.user, organization)[:500],
            "server": request.build_absolute_uri("/").rstrip("/"),
        },
        status=400 if form.errors else 200,
    )
    response["Cache-Control"] = "no-store"  # the new token is shown once
    return response
