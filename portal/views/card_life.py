"""Pages of a card's life (issue 19, ``cards.lifecycle``): the holder reports the card lost or
stolen; the agency blocks, unblocks (with a reason) and issues a replacement; a bank reads its card
notices and sets its webhook."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from cards import lifecycle, webhooks
from cards.models import Card, Webhook
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers.models import Membership, Organization
from issuers.roles import principal
from portal import selectors
from portal.access import agency_required, bank_member, citizen_required
from portal.forms import add_service_error, posted


class ReportLossForm(forms.Form):
    what = forms.ChoiceField(
        label="What happened",
        choices=(("lost", "I lost my card"), ("stolen", "My card was stolen")),
        widget=forms.RadioSelect,
        error_messages={"required": "Say whether the card was lost or stolen."},
    )
    details = forms.CharField(
        label="Anything to add (optional)",
        required=False,
        max_length=200,
        help_text="For example where or when. The agency reads it; your banks do not.",
    )
    confirm = forms.BooleanField(
        label="Block my card now. I understand it stops working everywhere until the agency unblocks or replaces it.",
        error_messages={"required": "Tick the box to block the card."},
    )

    def reason(self) -> str:
        details = self.cleaned_data["details"].strip()
        return self.cleaned_data["what"] + (f": {details}" if details else "")


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=lifecycle.MAX_REASON,
        error_messages={"required": "Give the reason: it is recorded in the transparency log."},
    )


class ReplaceForm(forms.Form):
    reason = forms.CharField(label="Reason (optional)", max_length=lifecycle.MAX_REASON, required=False)
    new_card = forms.RegexField(
        label="Card from stock (optional)",
        regex=r"^[0-9A-Fa-f]{8,32}$",
        required=False,
        help_text="The CIN of a card with no holder yet, such as a real card imported from a manufacturer's file; "
        "leave empty to issue a new card.",
        error_messages={"invalid": "A card's CIN: 8 to 32 hexadecimal digits."},
    )
    confirm = forms.BooleanField(
        label="Issue a new card to the holder and end this one",
        error_messages={"required": "Tick the box to confirm."},
    )


class WebhookForm(forms.Form):
    url = forms.CharField(
        label="Webhook address",
        max_length=webhooks.MAX_URL,
        help_text="An https:// address of your own; each notice is POSTed there, signed with the log's key.",
    )


# --------------------------------------------------------------------------------------------- citizen


@citizen_required
@require_http_methods(["GET", "POST"])
def report_loss(request: AuthenticatedHttpRequest, cin: str) -> HttpResponse:
    card = get_object_or_404(selectors.my_cards(request.user), cin=cin)
    if card.standing != Card.Standing.ACTIVE:
        messages.info(request, f"This card is {card.get_standing_display().lower()} already.")
        return redirect("portal:card", cin=card.cin)
    form = ReportLossForm(posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            lifecycle.block_card(card=card, actor=request.user, reason=form.reason())
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request,
                "Your card is blocked: it is refused everywhere, and locks itself if anyone presents it. "
                "Your banks have been told. Ask the agency for a replacement card.",
            )
            return redirect("portal:card", cin=card.cin)
    return render(
        request, "portal/citizen/report_loss.html", {"card": card, "form": form}, status=400 if form.errors else 200
    )


# --------------------------------------------------------------------------------------------- agency

AGENCY_ACTIONS = {
    "block": ("Block card", ReasonForm),
    "unblock": ("Unblock card", ReasonForm),
    "replace": ("Issue a replacement card", ReplaceForm),
}


@agency_required
@require_http_methods(["GET", "POST"])
def agency_card_action(request: AuthenticatedHttpRequest, cin: str, action: str) -> HttpResponse:
    if action not in AGENCY_ACTIONS:
        raise Http404("no such action")
    card = get_object_or_404(selectors.card_lookup(request.user, ""), cin=cin)
    title, form_class = AGENCY_ACTIONS[action]
    form = form_class(posted(request))
    if request.method == "POST" and form.is_valid():
        reason = form.cleaned_data.get("reason", "")
        try:
            if action == "block":
                lifecycle.block_card(card=card, actor=request.user, reason=reason)
                messages.success(request, f"Card {card.cin} is blocked.")
            elif action == "unblock":
                lifecycle.unblock_card(card=card, actor=request.user, reason=reason)
                messages.success(request, f"Card {card.cin} is unblocked.")
            else:
                new = lifecycle.replace_card(
                    old_card=card, actor=request.user, reason=reason, new_card_cin=form.cleaned_data["new_card"]
                )
                messages.success(request, f"Card {new.cin} is issued to replace card {card.cin}.")
                return redirect("portal:agency-card", cin=new.cin)
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            return redirect("portal:agency-card", cin=card.cin)
    return render(
        request,
        "portal/agency/card_action.html",
        {"card": card, "form": form, "title": title, "action": action, "banks": lifecycle.enrolled_banks(card)},
        status=400 if form.errors else 200,
    )


# --------------------------------------------------------------------------------------------- bank


@bank_member
@require_http_methods(["GET", "POST"])
def notices(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    can_admin = principal(request.user).has_role(bank.pk, Membership.Role.ADMIN)
    hook = Webhook.objects.filter(organization=bank).first()
    form = WebhookForm(posted(request), initial={"url": hook.url if hook else ""})
    if request.method == "POST":
        if not can_admin:
            raise Http404("no such page")  # only admins see the form
        try:
            if request.POST.get("action") == "clear":
                webhooks.clear_webhook(organization=bank, actor=request.user)
                messages.success(request, "The webhook is removed: notices are listed here only.")
                return redirect("portal:bank-notices", bank=bank.slug)
            if form.is_valid():
                webhooks.set_webhook(organization=bank, url=form.cleaned_data["url"], actor=request.user)
                messages.success(request, "The webhook is set.")
                return redirect("portal:bank-notices", bank=bank.slug)
        except ServiceError as exc:
            add_service_error(form, exc)
    return render(
        request,
        "portal/bank/notices.html",
        {
            "bank": bank,
            "notices": list(lifecycle.notices_for_bank(bank)[:100]),
            "hook": hook,
            "form": form,
            "can_admin": can_admin,
        },
        status=400 if form.errors else 200,
    )
