"""The bank's personalisation upload (issue 18, docs/personalization.md): a CSV of per-card data
for its instances, sealed to the bank's own key as it arrives; the page never shows the data."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers.models import Organization
from issuers.roles import principal
from portal.access import bank_member, require_operator
from portal.forms import add_service_error, files, posted
from updates import personalization


class PersonalizationUploadForm(forms.Form):
    csv_file = forms.FileField(
        label="CSV file",
        help_text="Columns card_number, instance_aid and data_hex (or sealed_b64). "
        "If any line is wrong, nothing is kept.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )


@bank_member
@require_http_methods(["GET", "POST"])
def upload(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    form = PersonalizationUploadForm(posted(request), files(request))
    if request.method == "POST":
        require_operator(request, bank)
        if form.is_valid():
            raw = form.cleaned_data["csv_file"].read(personalization.MAX_UPLOAD + 1)
            try:
                records = personalization.submit_personalization(
                    bank=bank, items=personalization.items_from_upload(raw), actor=request.user
                )
            except ServiceError as exc:
                add_service_error(form, exc, aliases={"file": "csv_file"})
            else:
                cards = len({r.card_id for r in records})
                messages.success(
                    request,
                    f"Personalisation of {len(records)} instance{'s' if len(records) != 1 else ''} on {cards} "
                    f"card{'s' if cards != 1 else ''} is sealed to your key service and waits for the cards.",
                )
                return redirect("portal:bank-personalization", bank=bank.slug)
    recent = personalization.recent_for(bank)
    return render(
        request,
        "portal/bank/personalization.html",
        {
            "bank": bank,
            "form": form,
            "recent": recent,
            "can_operate": principal(request.user).can_operate(bank.pk),
        },
        status=400 if form.errors else 200,
    )
