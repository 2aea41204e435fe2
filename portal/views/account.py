"""Account pages any signed-in user has: invitations to organisations, to accept or decline; the
card holder's e-mail preferences.

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

from cards import holder_emails
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


class EmailPreferencesForm(forms.Form):
    work_waiting = forms.BooleanField(required=False, label="Work waits for my card (present it to let it run)")
    work_done = forms.BooleanField(required=False, label="Work on my card is done")
    card_status = forms.BooleanField(required=False, label="My card is blocked, unblocked or replaced")
    expiry = forms.BooleanField(required=False, label="My card nears its expiry, or was renewed")


@login_required
@require_http_methods(["GET", "POST"])
def email_preferences(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The four switches of :class:`cards.models.NotificationPreferences` (every e-mail on until changed)."""
    current = holder_emails.preferences_of(request.user)
    initial = {name: getattr(current, name) for name in holder_emails.SWITCHES}
    form = EmailPreferencesForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        holder_emails.set_preferences(user=request.user, **form.cleaned_data)
        messages.success(request, "Your e-mail preferences are saved.")
        return redirect("portal:email-preferences")
    return render(request, "portal/email_preferences.html", {"form": form})
