"""Agency page: import a card manufacturer's personalisation file (docs/manufacturer-file.md),
with the lines at fault listed when it is refused, and the batches imported so far."""

from __future__ import annotations

import re

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from cards import manufacturer, selectors
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers.models import Organization
from issuers.roles import principal
from portal.access import agency_required
from portal.forms import files, posted

_LINE_ERROR = re.compile(r"^line (\d+): (.*)$")


class ManufacturerFileForm(forms.Form):
    manufacturer_file = forms.FileField(
        label="Manufacturer file",
        help_text="Format ecard-manufacturer-file/1 (JSON Lines). Every line is checked first: "
        "if any line is wrong, nothing is imported.",
        widget=forms.ClearableFileInput(attrs={"accept": ".jsonl,.json,application/jsonl,text/plain"}),
    )


def _line_errors(message: str) -> list[tuple[str, str]]:
    """``line N: what`` parts of a refusal as (line, what) rows; anything else is about the file."""
    rows = []
    for part in message.split("; "):
        found = _LINE_ERROR.match(part)
        rows.append((found.group(1), found.group(2)) if found else ("file", part))
    return rows


@agency_required
@require_http_methods(["GET", "POST"])
def manufacturer_files(request: AuthenticatedHttpRequest) -> HttpResponse:
    who = principal(request.user)
    agency = Organization.objects.get(pk=who.org_ids(Organization.Kind.AGENCY)[0])
    form = ManufacturerFileForm(posted(request), files(request))
    line_errors: list[tuple[str, str]] = []
    if request.method == "POST" and form.is_valid():
        if not who.can_operate(agency.pk):
            raise PermissionDenied("your role at the agency is read-only")
        upload = form.cleaned_data["manufacturer_file"]
        try:
            if upload.size > manufacturer.MAX_FILE_BYTES:
                raise ServiceError(f"the file is larger than {manufacturer.MAX_FILE_BYTES} bytes", field="file")
            batch = manufacturer.import_manufacturer_file(
                agency=agency, data=upload.read(), file_name=upload.name or "", actor=request.user
            )
        except ServiceError as exc:
            line_errors = _line_errors(exc.message)
            form.add_error(
                "manufacturer_file",
                f"The file was refused: {len(line_errors)} problem(s), listed below. Nothing was imported.",
            )
        else:
            messages.success(
                request, f"{batch.card_count} cards from {batch.manufacturer} imported (batch {batch.pk})."
            )
            return redirect("portal:agency-manufacturer-files")
    batches = selectors.manufacturer_batches_for(request.user)[:50]
    return render(
        request,
        "portal/agency/manufacturer_files.html",
        {"form": form, "line_errors": line_errors, "batches": batches},
        status=400 if form.errors else 200,
    )
