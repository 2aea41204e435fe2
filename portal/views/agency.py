"""Agency pages: issue cards (one, or a CSV batch), admit banks and register their key services, the
token policy, card lookup."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from cards import lifecycle
from cards import services as card_services
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers import key_services
from issuers import selectors as issuer_selectors
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from issuers.roles import principal
from portal import batch, selectors
from portal.access import agency_required
from portal.forms import (
    AdmitBankForm,
    CardBatchForm,
    IssueCardForm,
    KeyServiceForm,
    LookupForm,
    add_service_error,
    files,
    posted,
)
from updates import selectors as update_selectors


def _agency(request: AuthenticatedHttpRequest) -> Organization:
    who = principal(request.user)
    return Organization.objects.get(pk=who.org_ids(Organization.Kind.AGENCY)[0])


def _operator(request: AuthenticatedHttpRequest) -> Organization:
    agency = _agency(request)
    if not principal(request.user).can_operate(agency.pk):
        raise PermissionDenied("your role at the agency is read-only")
    return agency


@agency_required
@require_GET
def dashboard(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(
        request,
        "portal/agency/dashboard.html",
        {
            "agency": _agency(request),
            "cards": selectors.card_lookup(request.user, "").count(),
            "banks": issuer_selectors.organizations_for(request.user).filter(kind=Organization.Kind.BANK),
            "denials": selectors.token_denials(request.user, 5),
            "terminal_orgs": update_selectors.terminal_organizations_for(request.user).filter(
                kind=Organization.Kind.AGENCY
            ),
        },
    )


@agency_required
@require_GET
def cards(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = LookupForm(request.GET or None)
    query = form.cleaned_data["q"] if form.is_valid() else ""
    page = Paginator(selectors.card_lookup(request.user, query), 50).get_page(request.GET.get("page"))
    return render(request, "portal/agency/cards.html", {"form": form, "page_obj": page, "query": query})


@agency_required
@require_GET
def card_detail(request: AuthenticatedHttpRequest, cin: str) -> HttpResponse:
    card = get_object_or_404(selectors.card_lookup(request.user, ""), cin=cin)
    replaced_card, rows = lifecycle.replacement_progress(card)
    return render(
        request,
        "portal/agency/card.html",
        {
            "o": selectors.card_overview(request.user, card),
            "card": card,
            "replaced_card": replaced_card,
            "replacement_rows": rows,
        },
    )


@agency_required
@require_http_methods(["GET", "POST"])
def issue(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = IssueCardForm(posted(request))
    if request.method == "POST" and form.is_valid():
        agency = _operator(request)
        data = form.cleaned_data
        holder = None
        if data["holder"]:
            holder = get_user_model().objects.filter(username=data["holder"]).first()
            if holder is None:
                form.add_error("holder", f"There is no user named “{data['holder']}”.")
        if not form.errors:
            try:
                card = card_services.issue_card(
                    agency=agency,
                    holder=holder,
                    scp=data["scp"],
                    cin=data["cin"],
                    serial=data["serial"],
                    emulated=data["emulated"],
                    actor=request.user,
                )
            except ServiceError as exc:
                add_service_error(form, exc, aliases={"key_scheme": "scp"})
            else:
                messages.success(request, f"Card {card.cin} is issued.")
                return redirect("portal:agency-card", cin=card.cin)
    return render(request, "portal/agency/issue.html", {"form": form}, status=400 if form.errors else 200)


@agency_required
@require_http_methods(["GET", "POST"])
def issue_batch(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = CardBatchForm(posted(request), files(request))
    row_errors: list[batch.RowError] = []
    if request.method == "POST" and form.is_valid():
        agency = _operator(request)
        try:
            issued = batch.issue_batch(
                agency=agency,
                data=form.cleaned_data["csv_file"].read(batch.MAX_BYTES + 1),
                emulated=form.cleaned_data["emulated"],
                actor=request.user,
            )
        except batch.BatchRefused as exc:
            row_errors = exc.errors
            form.add_error(
                "csv_file", f"The file was refused: {len(row_errors)} problem(s), listed below. No card was issued."
            )
        else:
            messages.success(request, f"{len(issued)} cards issued.")
            return redirect("portal:agency-cards")
    return render(
        request,
        "portal/agency/batch.html",
        {"form": form, "row_errors": row_errors},
        status=400 if form.errors else 200,
    )


@agency_required
@require_http_methods(["GET", "POST"])
def banks(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = AdmitBankForm(posted(request))
    if request.method == "POST" and form.is_valid():
        _operator(request)
        data = form.cleaned_data
        try:
            bank = issuer_services.admit_bank(
                name=data["name"],
                slug=data["slug"],
                rid=data["rid"],
                pix_prefix=data["pix_prefix"],
                management=data["management"],
                scp=data["scp"],
                key_length=data["key_length"],
                actor=request.user,
            )
        except ServiceError as exc:
            add_service_error(form, exc, aliases={"prefix": "rid"})
        else:
            messages.success(request, f"{bank.name} is admitted.")
            return redirect("portal:agency-banks")
    banks = (
        issuer_selectors.organizations_for(request.user)
        .filter(kind=Organization.Kind.BANK)
        .prefetch_related("aid_ranges")
        .select_related("ssd_template", "key_service")
        .order_by("name")
    )
    return render(
        request, "portal/agency/banks.html", {"form": form, "banks": banks}, status=400 if form.errors else 200
    )


@agency_required
@require_GET
def policy(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(request, "portal/agency/policy.html", {"denials": selectors.token_denials(request.user, 50)})


def _agency_admin(request: AuthenticatedHttpRequest) -> bool:
    return principal(request.user).has_role(_agency(request).pk, Membership.Role.ADMIN)


@agency_required
@require_http_methods(["GET", "POST"])
def bank_detail(request: AuthenticatedHttpRequest, bank: str) -> HttpResponse:
    """One bank as the agency sees it, with its key service: status, and (agency admins) the form
    that registers or replaces it."""
    organization = get_object_or_404(
        issuer_selectors.organizations_for(request.user).filter(kind=Organization.Kind.BANK), slug=bank
    )
    form = KeyServiceForm(posted(request))
    if request.method == "POST":
        if not _agency_admin(request):
            raise PermissionDenied("only an agency administrator registers a bank's key service")
        if form.is_valid():
            try:
                service = key_services.register_key_service(
                    organization=organization,
                    endpoint=form.cleaned_data["endpoint"],
                    service_certificate_pem=form.cleaned_data["service_certificate"],
                    actor=request.user,
                )
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                if service.reachable:
                    messages.success(request, f"The key service of {organization.name} is registered and answers.")
                else:
                    messages.warning(
                        request,
                        f"The key service of {organization.name} is registered, but it does not answer yet: "
                        f"{service.last_error}",
                    )
                return redirect("portal:agency-bank", bank=organization.slug)
    return render(
        request,
        "portal/agency/bank.html",
        {
            "bank": organization,
            "ks": issuer_selectors.key_service_status(organization),
            "form": form,
            "can_register": _agency_admin(request),
            "agency_view": True,
        },
        status=400 if form.errors else 200,
    )
