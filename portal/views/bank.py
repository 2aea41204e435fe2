"""Bank pages: dashboard (with the bank's key service), security domain template and key sets,
releases. Every page is of one of the user's own banks (another bank's URL is a 404)."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit import security
from cards import selectors as card_selectors
from cards import services as card_services
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers import key_services
from issuers import selectors as issuer_selectors
from issuers.models import Membership, Organization
from issuers.roles import principal
from portal import charts, selectors
from portal.access import bank_member, require_operator
from portal.forms import ConfirmForm, ReleaseForm, add_service_error, files, posted
from portal.views import code_signing
from updates import rollout_selectors
from updates.releases import MAX_CAP_BYTES, create_release

logger = logging.getLogger(__name__)


def _context(request: AuthenticatedHttpRequest, bank: Organization, **extra: object) -> dict[str, object]:
    who = principal(request.user)
    return {
        "bank": bank,
        "can_operate": who.can_operate(bank.pk),
        "can_admin": who.has_role(bank.pk, Membership.Role.ADMIN),
        **extra,
    }


@bank_member
@require_GET
def dashboard(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    data = selectors.bank_dashboard(request.user, bank)
    return render(
        request,
        "portal/bank/dashboard.html",
        _context(
            request,
            bank,
            d=data,
            chart=charts.bar_chart(data["bars"]),
            ks=issuer_selectors.key_service_status(bank),
            held=list(card_selectors.jobs_held_for_key_service(bank.pk)[:5]),
            held_count=card_selectors.jobs_held_for_key_service(bank.pk).count(),
            platform_identity=_platform_identity(),
            **_fleet_pictures(bank),
        ),
    )


def _fleet_pictures(bank: Organization) -> dict[str, object]:
    """The dashboard's pictures (issue 18): installed versions over time per package, and the
    progress of each recent campaign by wave."""
    history = rollout_selectors.version_history(bank.pk)
    history_charts = [
        {
            "package_aid": aid,
            "chart_id": f"history-{n}",
            "title": f"Cards per version of {aid}, by day",
            "chart": charts.line_chart(history["days"], by_version),
        }
        for n, (aid, by_version) in enumerate(history["packages"].items())
    ]
    campaigns = [
        {
            "rollout": rollout,
            "progress": progress,
            "pending": progress["overall"]["pending"] + progress["overall"]["running"],
            "chart": charts.stacked_chart(progress["groups"]),
            "chart_id": f"campaign-{rollout.pk}",
            "title": f"Cards of rollout {rollout.pk} per wave and outcome",
        }
        for rollout, progress in rollout_selectors.campaigns_of(bank.pk)
    ]
    return {"history": history, "history_charts": history_charts, "campaigns": campaigns}


@bank_member
@require_GET
def keys(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    return render(
        request,
        "portal/bank/keys.html",
        _context(
            request,
            bank,
            template=getattr(bank, "ssd_template", None),
            sds=selectors.bank_security_domains(request.user, bank).select_related("card")[:200],
            key_sets=selectors.bank_key_sets(request.user, bank)[:200],
        ),
    )


@bank_member
@require_http_methods(["GET", "POST"])
def rotate(request: AuthenticatedHttpRequest, bank: Organization, sd: int) -> HttpResponse:
    require_operator(request, bank)
    security_domain = get_object_or_404(selectors.bank_security_domains(request.user, bank), pk=sd)
    form = ConfirmForm(posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            card_services.request_key_rotation(security_domain=security_domain, actor=request.user)
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request,
                f"Key rotation of {security_domain.aid} on card {security_domain.card.cin} is queued; "
                "it runs the next time the card is presented.",
            )
            return redirect("portal:bank-keys", bank=bank.slug)
    return render(
        request,
        "portal/bank/rotate.html",
        _context(request, bank, sd=security_domain, form=form),
        status=400 if form.errors else 200,
    )


@bank_member
@require_http_methods(["GET", "POST"])
def releases(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    form = ReleaseForm(posted(request), files(request))
    if request.method == "POST":
        require_operator(request, bank)
        if not form.is_valid():
            security.record(
                security.Kind.UPLOAD_REJECTED,
                request=request,
                organization=bank,
                reason="form: " + ", ".join(sorted(form.errors)),
            )
        else:
            upload = form.cleaned_data["cap_file"]
            try:
                release = create_release(
                    bank=bank,
                    cap_bytes=upload.read(MAX_CAP_BYTES + 1),  # more is refused: no need to hold it all
                    filename=upload.name,
                    changelog=form.cleaned_data["changelog"],
                    actor=request.user,
                )
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                awaits = " and awaits the agency's review" if release.state == release.State.PENDING else ""
                messages.success(
                    request, f"Release {release.package_aid} v{release.package_version} is published{awaits}."
                )
                return redirect("portal:bank-release", bank=bank.slug, release=release.pk)
    return render(
        request,
        "portal/bank/releases.html",
        _context(request, bank, form=form, releases=selectors.bank_releases(request.user, bank)),
        status=400 if form.errors else 200,
    )


@bank_member
@require_GET
def release_detail(request: AuthenticatedHttpRequest, bank: Organization, release: int) -> HttpResponse:
    record = get_object_or_404(selectors.bank_releases(request.user, bank), pk=release)
    return render(request, "portal/bank/release.html", code_signing.release_context(request, bank, record))


def _platform_identity() -> tuple[str, str] | None:
    """The platform's TLS client certificate (PEM, SHA-256) for the bank to pin; None if it cannot be read."""
    try:
        identity = key_services.platform_identity()
    except (OSError, ValueError):
        logger.exception("the platform's key service client identity is not available")
        return None
    return identity.certificate_pem, identity.sha256


@bank_member
@require_POST
def key_service_check(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    require_operator(request, bank)
    try:
        service = key_services.check_key_service(key_services.active_service(bank))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        if service.reachable:
            messages.success(request, "The key service answered: it is reachable.")
        else:
            messages.error(request, f"The key service did not answer: {service.last_error}")
    return redirect(reverse("portal:bank", args=[bank.slug]) + "#key-service-h")


@bank_member
@require_POST
def key_service_rotate(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    if not principal(request.user).has_role(bank.pk, Membership.Role.ADMIN):
        raise PermissionDenied("only the bank's administrators rotate the OCE certificate")
    try:
        service = key_services.rotate_oce_certificate(organization=bank, actor=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        expiry = f"{service.oce_not_after:%Y-%m-%d}" if service.oce_not_after else "unknown"
        messages.success(request, f"A new OCE certificate is installed in your key service; it expires on {expiry}.")
    return redirect(reverse("portal:bank", args=[bank.slug]) + "#key-service-h")
