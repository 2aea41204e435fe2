"""Account pages any signed-in user has: invitations to organisations, to accept or decline.

An invitation grants nothing until its user accepts it here (or through the API); the rules are
those of :func:`issuers.services.accept_invitation`.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers import selectors as issuer_selectors
from issuers import services as issuer_services


class AnswerForm(forms.Form):
    decision = forms.ChoiceField(choices=[("accept", "Accept"), ("decline", "Decline")])


@login_required
@require_GET
def invitations(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(
        request, "portal/invitations.html", {"invitations": issuer_selectors.pending_invitations_of(request.user)}
    )


@login_required
@require_http_methods(["POST"])
def answer_invitation(request: AuthenticatedHttpRequest, invitation: int) -> HttpResponse:
    record = get_object_or_404(issuer_selectors.pending_invitations_of(request.user), pk=invitation)
    form = AnswerForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose to accept or decline the invitation.")
        return redirect("portal:invitations")
    try:
        if form.cleaned_data["decision"] == "accept":
            issuer_services.accept_invitation(invitation=record, user=request.user)
            messages.success(request, f"You are now a member of {record.organization.name} ({record.role}).")
        else:
            issuer_services.decline_invitation(invitation=record, user=request.user)
            messages.success(request, f"You declined the invitation of {record.organization.name}.")
    except ServiceError as exc:
        messages.error(request, f"The invitation of {record.organization.name} cannot be accepted: {exc.message}")
        return render(
            request,
            "portal/invitations.html",
            {"invitations": issuer_selectors.pending_invitations_of(request.user)},
            status=exc.http_status,  # one mapping of service refusals to HTTP (ecard.errors)
        )
    return redirect("portal:invitations")
