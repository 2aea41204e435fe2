"""Card repairs in the portal (``updates.repair``, docs/repair.md): the agency's page of a card's
repair (start one, read the plan computed from the card's R-MAC'd registry, run it once the touched
banks have answered, or cancel it), and a bank's page of the repairs that wait for its consent."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from cards.models import CardRepair, RepairConsent
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers.models import Organization
from issuers.roles import principal
from portal import selectors
from portal.access import agency_required, bank_member
from portal.forms import add_service_error, posted
from updates import repair as repairs


class RepairForm(forms.Form):
    action = forms.ChoiceField(choices=[("start", "Start"), ("execute", "Run the plan"), ("cancel", "Cancel")])
    reason = forms.CharField(
        label="Why (for the log)", max_length=500, required=False, help_text="e.g. the support ticket"
    )


@agency_required
@require_http_methods(["GET", "POST"])
def card_repair(request: AuthenticatedHttpRequest, cin: str) -> HttpResponse:
    card = get_object_or_404(selectors.card_lookup(request.user, ""), cin=cin)
    history = list(
        CardRepair.objects.filter(card=card).prefetch_related("consents__bank").order_by("-created_at", "-id")[:10]
    )
    current = next((r for r in history if r.state in CardRepair.OPEN_STATES), history[0] if history else None)
    form = RepairForm(posted(request))
    if request.method == "POST" and form.is_valid():
        action = form.cleaned_data["action"]
        try:
            if action == "start":
                repairs.start_repair(card=card, actor=request.user, reason=form.cleaned_data["reason"])
                messages.success(request, "The card's registry is read the next time it is presented.")
            elif current is None:
                raise ServiceError("there is no repair of this card", code="state")
            elif action == "execute":
                repairs.execute_repair(repair=current, actor=request.user)
                messages.success(request, "The plan runs once the banks it touches have answered.")
            else:
                repairs.cancel_repair(repair=current, actor=request.user)
                messages.success(request, "The repair is cancelled.")
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            return redirect("portal:agency-card-repair", cin=card.cin)
    return render(
        request,
        "portal/agency/repair.html",
        {
            "card": card,
            "repair": current,
            "is_open": current is not None and current.state in CardRepair.OPEN_STATES,
            "history": history,
            "form": form,
        },
        status=400 if form.errors else 200,
    )


class ConsentForm(forms.Form):
    repair = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    decision = forms.ChoiceField(choices=[("give", "Give consent"), ("refuse", "Refuse")])


@bank_member
@require_http_methods(["GET", "POST"])
def bank_repairs(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    """The repairs whose plan touches the bank's security domains: the steps in words, and the
    bank's answer (operators; others read). Steps of other banks and the observed registry are not
    shown."""
    can_answer = principal(request.user).can_operate(bank.pk)
    consents = list(
        RepairConsent.objects.filter(bank=bank).select_related("repair__card", "decided_by").order_by("-repair_id")[:50]
    )
    waiting = [c for c in consents if c.state == RepairConsent.State.PENDING and c.repair.state == "awaiting_consent"]
    rows = [(c, [step for step in c.repair.plan if step.get("bank") == bank.slug]) for c in consents]
    form = ConsentForm(posted(request))
    if request.method == "POST":
        if not can_answer:
            raise Http404("no such page")
        if form.is_valid():
            consent = next((c for c in waiting if c.repair_id == form.cleaned_data["repair"]), None)
            if consent is None:
                raise Http404("no such repair awaits your consent")
            give = form.cleaned_data["decision"] == "give"
            try:
                repairs.decide_consent(repair=consent.repair, bank=bank, actor=request.user, give=give)
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                messages.success(
                    request,
                    f"Consent {'given' if give else 'refused'} for the repair of card {consent.repair.card.cin}.",
                )
                return redirect("portal:bank-repairs", bank=bank.slug)
    return render(
        request,
        "portal/bank/repairs.html",
        {"bank": bank, "rows": rows, "waiting": {c.pk for c in waiting}, "form": form, "can_answer": can_answer},
        status=400 if form.errors else 200,
    )
