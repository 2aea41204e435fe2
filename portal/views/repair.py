"""The agency's page of a card repair (``updates.repair``, docs/repair.md): start one, read the
plan computed from the card's R-MAC'd registry, run it (the touched banks are asked first), or
cancel it."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from cards.models import CardRepair
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from portal import selectors
from portal.access import agency_required
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
