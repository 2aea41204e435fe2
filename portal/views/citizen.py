"""Citizen pages: my card, add a bank (with consent), remove a bank, connect your card."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from audit import security
from cards import history as card_history
from cards import lifecycle
from cards import selectors as card_selectors
from cards import services as card_services
from cards.models import Card, Enrollment
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers import selectors as issuer_selectors
from portal import selectors
from portal.access import citizen_required
from portal.forms import BankChoiceForm, ConfirmForm, ConsentForm, CredentialForm, add_service_error, posted, posted_id
from updates import renewal, rollout_selectors
from updates import selectors as update_selectors
from updates import services as update_services

HISTORY_PAGE = 20  # sentences per page of the card's history


def _card(request: AuthenticatedHttpRequest, cin: str) -> Card:
    return get_object_or_404(selectors.my_cards(request.user), cin=cin)


@citizen_required
@require_GET
def my_card(request: AuthenticatedHttpRequest) -> HttpResponse:
    cards = list(selectors.my_cards(request.user))
    live = [c for c in cards if c.standing != Card.Standing.TERMINATED]
    if len(cards) == 1 or len(live) == 1:  # a replaced card stays listed; the live one is "my card"
        return redirect("portal:card", cin=(live or cards)[0].cin)
    return render(request, "portal/citizen/cards.html", {"cards": cards})


@citizen_required
@require_GET
def card_detail(request: AuthenticatedHttpRequest, cin: str) -> HttpResponse:
    overview = selectors.card_overview(request.user, _card(request, cin))
    if request.GET.get("part") == "live":
        return render(request, "portal/citizen/_live.html", {"o": overview, "card": overview.card})
    notices = list(rollout_selectors.notices_for(request.user, overview.card.pk))
    history = Paginator(card_history.entries(request.user, overview.card), HISTORY_PAGE).get_page(
        request.GET.get("page")
    )
    context = {
        "o": overview,
        "card": overview.card,
        "notices": notices,
        "history": history,
        "history_lines": card_history.in_words(history.object_list),
        "renewal": renewal.renewal_status(overview.card),  # expiry and the Renew button
    }
    context["replaced_card"], context["replacement_rows"] = lifecycle.replacement_progress(overview.card)
    return render(request, "portal/citizen/card.html", context)


@citizen_required
@require_http_methods(["GET", "POST"])
def add_bank(request: AuthenticatedHttpRequest, cin: str) -> HttpResponse:
    card = _card(request, cin)
    banks = selectors.enrollable_banks(request.user, card)
    form = BankChoiceForm(
        posted(request), banks=issuer_selectors.organizations_for(request.user).filter(pk__in=[b.pk for b in banks])
    )
    if request.method == "POST" and form.is_valid():
        return redirect("portal:add-bank-consent", cin=card.cin, bank=form.cleaned_data["bank"].slug)
    return render(
        request,
        "portal/citizen/add_bank.html",
        {"card": card, "form": form, "banks": banks},
        status=400 if form.errors else 200,
    )


@citizen_required
@require_http_methods(["GET", "POST"])
def add_bank_consent(request: AuthenticatedHttpRequest, cin: str, bank: str) -> HttpResponse:
    card = _card(request, cin)
    organization = next((b for b in selectors.enrollable_banks(request.user, card) if b.slug == bank), None)
    if organization is None:
        raise Http404("no such bank to add")
    text = card_services.consent_text_for(card, organization)
    form = ConsentForm(posted(request), initial={"consent_text": text})
    valid = request.method == "POST" and form.is_valid()
    if request.method == "POST" and not valid:
        # Refused before the service (consent box not ticked, statement altered).
        security.record(
            security.Kind.CONSENT_REFUSED,
            request=request,
            organization=organization,
            reason="form: " + ", ".join(sorted(form.errors)),
        )
    if valid:
        try:
            card_services.request_enrollment(
                card=card,
                bank=organization,
                citizen=request.user,
                consent_text=form.cleaned_data["consent_text"],
                accepted=form.cleaned_data["accepted"],
            )
        except ServiceError as exc:
            add_service_error(form, exc)  # the service recorded the refusal
        else:
            messages.success(
                request,
                f"{organization.name} will be added the next time you connect your card.",
            )
            return redirect("portal:card", cin=card.cin)
    template = getattr(organization, "ssd_template", None)
    return render(
        request,
        "portal/citizen/consent.html",
        {
            "card": card,
            "bank": organization,
            "text": text,
            "form": form,
            "applets": template.default_applets if template else [],
        },
        status=400 if form.errors else 200,
    )


@citizen_required
@require_http_methods(["GET", "POST"])
def remove_bank(request: AuthenticatedHttpRequest, cin: str, enrollment: int) -> HttpResponse:
    card = _card(request, cin)
    record = get_object_or_404(
        card_selectors.enrollments_for(request.user).filter(card=card, status__in=Enrollment.OPEN_STATUSES),
        pk=enrollment,
    )
    form = ConfirmForm(posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            card_services.request_removal(enrollment=record, actor=request.user)
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"{record.bank.name} will be removed the next time you connect your card.")
            return redirect("portal:card", cin=card.cin)
    return render(
        request,
        "portal/citizen/remove_bank.html",
        {"card": card, "enrollment": record, "form": form},
        status=400 if form.errors else 200,
    )


@citizen_required
@never_cache
@require_http_methods(["GET", "POST"])
def connect(request: AuthenticatedHttpRequest) -> HttpResponse:
    """How to present the card (the agent), and the device credentials it uses."""
    form = CredentialForm(posted(request))
    token = None
    if request.method == "POST" and request.POST.get("action") == "revoke":
        credential = get_object_or_404(update_selectors.credentials_for(request.user), pk=posted_id(request))
        update_services.revoke_agent_credential(credential=credential, actor=request.user)
        messages.success(request, f"The credential “{credential.name}” is revoked.")
        return redirect("portal:connect")
    if request.method == "POST" and form.is_valid():
        try:
            _credential, token = update_services.issue_agent_credential(
                user=request.user, name=form.cleaned_data["name"]
            )
        except ServiceError as exc:
            add_service_error(form, exc, aliases={"user": "name"})
        else:
            form = CredentialForm()
    response = render(
        request,
        "portal/citizen/connect.html",
        {
            "form": form,
            "token": token,
            "credentials": update_selectors.credentials_for(request.user).order_by("-created_at"),
            "server": request.build_absolute_uri("/").rstrip("/"),
            "cards": selectors.my_cards(request.user),
        },
        status=400 if form.errors else 200,
    )
    response["Cache-Control"] = "no-store"
    return response
