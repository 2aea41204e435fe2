"""The bank's console (issue 18): its SSD template and default applets, install and key-rotation
campaigns, fleet actions on one card (lock, unlock, reset failed authentications, close the
account), release revocation. Thin views over services; every page is of one of the user's own
banks (another bank's URL is a 404), every write needs an operator (auditors read) and a POST
with its CSRF token, and every service writes its audit entry."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from cards import selectors as card_selectors
from cards import services as card_services
from cards.models import Enrollment, SecurityDomain
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from issuers.roles import principal
from portal import selectors
from portal.access import bank_member, require_operator
from portal.forms import (
    CloseAccountForm,
    DefaultAppletFormSet,
    InstallCampaignForm,
    ReasonConfirmForm,
    RotateCampaignForm,
    TemplateForm,
    add_service_error,
    files,
    posted,
)
from updates import rollout_fleet, rollout_selectors, rollouts
from updates.releases import revoke_release

MAX_CSV_BYTES = 2 * 1024 * 1024


def _context(request: AuthenticatedHttpRequest, bank: Organization, **extra: object) -> dict[str, object]:
    who = principal(request.user)
    return {
        "bank": bank,
        "can_operate": who.can_operate(bank.pk),
        "can_admin": who.has_role(bank.pk, Membership.Role.ADMIN),
        **extra,
    }


# ------------------------------------------------------------------------------------------ template


@bank_member
@require_http_methods(["GET", "POST"])
def template(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    current = getattr(bank, "ssd_template", None)
    if current is None:
        raise PermissionDenied("the agency has not set up this bank's security domain template yet")
    releases = rollout_selectors.approved_releases(request.user, bank)
    initial_rows = [
        {
            "release": a.get("release"),
            "instance_aid": a.get("instance_aid", ""),
            "privileges": a.get("privileges", "00"),
            "install_params": a.get("install_params", ""),
            "name": a.get("name", ""),
        }
        for a in current.default_applets
    ]
    form = TemplateForm(posted(request), initial={"scp": str(current.scp)})
    rows = DefaultAppletFormSet(
        posted(request),
        prefix="applet",
        initial=initial_rows + [{}] * max(0, min(2, 8 - len(initial_rows))),
        form_kwargs={"releases": releases},
    )
    if request.method == "POST":
        require_operator(request, bank)
        if form.is_valid() and rows.is_valid():
            entries = [
                {
                    "release_id": row["release"].pk,
                    "instance_aid": row["instance_aid"],
                    "privileges": row["privileges"] or "00",
                    "install_params": row["install_params"],
                    "name": row["name"],
                }
                for row in rows.cleaned_data
                if row.get("release") is not None
            ]
            try:
                issuer_services.update_ssd_template(
                    organization=bank, actor=request.user, scp=form.cleaned_data["scp"], default_applets=entries
                )
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                messages.success(
                    request, "The template is saved. New enrollments get it; cards already enrolled are unchanged."
                )
                return redirect("portal:bank-template", bank=bank.slug)
    return render(
        request,
        "portal/bank/template.html",
        _context(request, bank, template=current, form=form, rows=rows, releases=releases),
        status=400 if (form.errors or any(rows.errors) or rows.non_form_errors()) else 200,
    )


# ------------------------------------------------------------------------------------------ campaigns


def _csv_text(upload: Any) -> str:
    raw = upload.read(MAX_CSV_BYTES + 1)
    if len(raw) > MAX_CSV_BYTES:
        raise ServiceError(f"the CSV file is larger than {MAX_CSV_BYTES // 1024} KiB", field="csv_file")
    try:
        return str(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ServiceError("the CSV file is not UTF-8 text", field="csv_file") from None


@bank_member
@require_http_methods(["GET", "POST"])
def install_campaign(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    form = InstallCampaignForm(
        posted(request), files(request), releases=rollout_selectors.approved_releases(request.user, bank)
    )
    if request.method == "POST":
        require_operator(request, bank)
        if form.is_valid():
            data = form.cleaned_data
            try:
                cins: list[str] | None = None
                if data["scope"] == "list":
                    cins = rollout_fleet.parse_card_list(data["cins"])
                elif data["scope"] == "csv":
                    cins = rollout_fleet.parse_card_csv(_csv_text(data["csv_file"]))
                rollout = rollouts.create_install_rollout(
                    bank=bank,
                    release=data["release"],
                    actor=request.user,
                    instances=[
                        {
                            "instance_aid": aid,
                            "privileges": data["privileges"] or "00",
                            "install_params": data["install_params"],
                        }
                        for aid in data["instances"]
                    ],
                    cins=cins,
                    groups=data["groups"],
                    success_threshold=data["success_threshold"],
                    error_threshold=data["error_threshold"],
                    retry_count=data["retry_count"],
                    name=data["name"],
                )
            except ServiceError as exc:
                add_service_error(form, exc, aliases={"default_applets": "instances"})
            else:
                messages.success(request, f"Install campaign {rollout.pk} is planned for {rollout.total} cards.")
                return redirect("portal:bank-rollout", bank=bank.slug, rollout=rollout.pk)
    return render(
        request,
        "portal/bank/install_campaign.html",
        _context(request, bank, form=form),
        status=400 if form.errors else 200,
    )


@bank_member
@require_http_methods(["GET", "POST"])
def rotate_campaign(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    form = RotateCampaignForm(posted(request))
    if request.method == "POST":
        require_operator(request, bank)
        if form.is_valid():
            data = form.cleaned_data
            try:
                rollout = rollouts.create_rotation_rollout(
                    bank=bank,
                    actor=request.user,
                    groups=data["groups"],
                    success_threshold=data["success_threshold"],
                    error_threshold=data["error_threshold"],
                    retry_count=data["retry_count"],
                    name=data["name"],
                )
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                messages.success(request, f"Key rotation {rollout.pk} is planned for {rollout.total} cards.")
                return redirect("portal:bank-rollout", bank=bank.slug, rollout=rollout.pk)
    return render(
        request,
        "portal/bank/rotate_campaign.html",
        _context(request, bank, form=form),
        status=400 if form.errors else 200,
    )


# ------------------------------------------------------------------------------------------ one card


def _bank_sd(request: AuthenticatedHttpRequest, bank: Organization, cin: str) -> SecurityDomain:
    return get_object_or_404(
        selectors.bank_security_domains(request.user, bank).select_related("card"), card__cin=cin.upper()
    )


@bank_member
@require_http_methods(["GET"])
def cards(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    """The bank's cards (its security domains), found by card number."""
    query = (request.GET.get("cin") or "").strip().upper()[:32]
    sds = selectors.bank_security_domains(request.user, bank).select_related("card")
    if query:
        exact = sds.filter(card__cin=query).first()
        if exact is not None:
            return redirect("portal:bank-card", bank=bank.slug, cin=exact.card.cin)
        sds = sds.filter(card__cin__startswith=query)
    return render(request, "portal/bank/cards.html", _context(request, bank, sds=sds[:100], query=query))


@bank_member
@require_http_methods(["GET"])
def card(request: AuthenticatedHttpRequest, bank: Organization, cin: str) -> HttpResponse:
    sd = _bank_sd(request, bank, cin)
    return render(
        request,
        "portal/bank/card.html",
        _context(
            request,
            bank,
            sd=sd,
            applets=list(sd.applets.order_by("instance_aid")),
            jobs=list(card_selectors.jobs_for(request.user).filter(security_domain=sd).order_by("-id")[:20]),
            enrollment=Enrollment.objects.filter(
                security_domain=sd, bank=bank, status=Enrollment.Status.ACTIVE
            ).first(),
        ),
    )


CARD_ACTIONS = {
    "lock": "Lock our security domain on this card",
    "unlock": "Unlock our security domain on this card",
    "reset-failures": "Clear the failed authentications of our security domain",
    "close": "Close the account: remove our security domain from this card",
}


@bank_member
@require_http_methods(["GET", "POST"])
def card_action(request: AuthenticatedHttpRequest, bank: Organization, cin: str, action: str) -> HttpResponse:
    if action not in CARD_ACTIONS:
        raise Http404("no such action")
    sd = _bank_sd(request, bank, cin)  # another bank's card is a 404 before any role check
    require_operator(request, bank)
    if action == "reset-failures" and not principal(request.user).has_role(bank.pk, Membership.Role.ADMIN):
        raise PermissionDenied("only the bank's administrators clear failed authentications")
    form: ReasonConfirmForm | CloseAccountForm = (
        CloseAccountForm(posted(request)) if action == "close" else ReasonConfirmForm(posted(request))
    )
    if request.method == "POST" and form.is_valid():
        try:
            if action in ("lock", "unlock"):
                card_services.request_sd_lock(security_domain=sd, lock=action == "lock", actor=request.user)
                done = f"The {action} of your security domain on card {sd.card.cin} is queued."
            elif action == "reset-failures":
                card_services.reset_auth_failures(security_domain=sd, actor=request.user)
                done = "The failed authentications are cleared."
            else:
                rollout_fleet.close_account(security_domain=sd, actor=request.user, message=form.cleaned_data["reason"])
                done = f"The removal from card {sd.card.cin} is queued; the card holder is notified."
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, done)
            return redirect("portal:bank-card", bank=bank.slug, cin=sd.card.cin)
    return render(
        request,
        "portal/bank/card_action.html",
        _context(request, bank, sd=sd, form=form, action=action, title=CARD_ACTIONS[action]),
        status=400 if form.errors else 200,
    )


@bank_member
@require_http_methods(["GET", "POST"])
def revoke(request: AuthenticatedHttpRequest, bank: Organization, release: int) -> HttpResponse:
    record = get_object_or_404(selectors.bank_releases(request.user, bank), pk=release)
    require_operator(request, bank)
    form = ReasonConfirmForm(posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            revoke_release(release=record, actor=request.user, reason=form.cleaned_data["reason"])
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request, f"Release {record.package_aid} v{record.package_version} is revoked; its rollouts are paused."
            )
            return redirect("portal:bank-release", bank=bank.slug, release=record.pk)
    return render(
        request,
        "portal/bank/revoke.html",
        _context(request, bank, release=record, form=form),
        status=400 if form.errors else 200,
    )
