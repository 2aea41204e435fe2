"""Release review and code signing in the portal (issue 18): the agency's queue of releases awaiting
review, its code-signing settings (Mandated DAP, each bank's approval policy), a bank's DAP key,
and the DAP signature of a release. Views stay thin over ``updates.releases``,
``issuers.code_signing`` and their selectors; a refusal shows next to the form."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers import code_signing
from issuers.models import BankDapKey, Membership, Organization, ReleasePolicy
from issuers.roles import principal
from portal import selectors
from portal.access import agency_required, bank_member, require_operator
from portal.forms import (
    DapKeyForm,
    DapSignatureForm,
    MandatedDapForm,
    RejectReleaseForm,
    ReleasePolicyForm,
    add_service_error,
    posted,
    posted_id,
)
from updates import releases as release_services
from updates import selectors as update_selectors
from updates.models import Release
from updates.rollout_selectors import releases_for

RECENT = 50


def _agency_admin(request: AuthenticatedHttpRequest) -> bool:
    who = principal(request.user)
    return any(who.has_role(org_id, Membership.Role.ADMIN) for org_id in who.org_ids(Organization.Kind.AGENCY))


@agency_required
@require_http_methods(["GET", "POST"])
def agency_releases(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Releases awaiting review (approve, or reject with a reason) and the latest decisions."""
    reject_form = RejectReleaseForm(posted(request) if request.POST.get("action") == "reject" else None)
    who = principal(request.user)
    failed = 0
    if request.method == "POST":
        if not who.agency_operator:
            raise PermissionDenied("only agency operators review releases")
        release = releases_for(request.user).filter(pk=posted_id(request)).first()
        if release is None:
            raise Http404("no such release")
        action = request.POST.get("action")
        name = f"{release.bank.name}'s {release.package_aid} v{release.package_version}"
        try:
            if action == "approve":
                release_services.approve_release(release=release, actor=request.user)
                messages.success(request, f"{name} is approved.")
                return redirect("portal:agency-releases")
            if action == "reject":
                if reject_form.is_valid():
                    release_services.reject_release(
                        release=release, actor=request.user, reason=reject_form.cleaned_data["reason"]
                    )
                    messages.success(request, f"{name} is rejected.")
                    return redirect("portal:agency-releases")
            else:
                raise Http404("no such action")
        except ServiceError as exc:
            if action == "reject":
                add_service_error(reject_form, exc)
            else:
                messages.error(request, f"{name}: {exc.message}")
                failed = exc.http_status
    decided = (
        releases_for(request.user)
        .exclude(state=Release.State.PENDING)
        .filter(approval=Release.Approval.REVIEW)
        .select_related("approved_by", "rejected_by")
        .order_by("-created_at", "-id")[:RECENT]
    )
    return render(
        request,
        "portal/agency/releases.html",
        {
            "pending": update_selectors.pending_releases(request.user)[:200],
            "decided": decided,
            "reject_form": reject_form,
            "can_review": who.agency_operator,
        },
        status=400 if reject_form.errors else failed or 200,
    )


@agency_required
@require_http_methods(["GET", "POST"])
def agency_code_signing(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Mandated DAP on or off, and each bank's release approval policy (agency administrators)."""
    current = code_signing.mandated_dap_enabled()
    which = request.POST.get("form") if request.method == "POST" else None
    dap_form = MandatedDapForm(posted(request) if which == "mandated" else None, initial={"mandated_dap": current})
    policy_form = ReleasePolicyForm(posted(request) if which == "policy" else None)
    if request.method == "POST":
        if not _agency_admin(request):
            raise PermissionDenied("only agency administrators change the code-signing settings")
        try:
            if which == "mandated":
                if dap_form.is_valid():
                    enabled = dap_form.cleaned_data["mandated_dap"]
                    _row, signed = release_services.set_mandated_dap_policy(enabled=enabled, actor=request.user)
                    note = f" {signed} approved release(s) signed." if signed else ""
                    messages.success(request, f"Mandated DAP is {'on' if enabled else 'off'}.{note}")
                    return redirect("portal:agency-code-signing")
            elif which == "policy":
                if policy_form.is_valid():
                    bank = policy_form.cleaned_data["bank"]
                    code_signing.set_release_policy(
                        bank=bank, approval=policy_form.cleaned_data["approval"], actor=request.user
                    )
                    messages.success(request, f"The release policy of {bank.name} is saved.")
                    return redirect("portal:agency-code-signing")
            else:
                raise Http404("no such form")
        except ServiceError as exc:
            add_service_error(policy_form if which == "policy" else dap_form, exc)
    policies = {p.bank_id: p.approval for p in ReleasePolicy.objects.all()}
    keys = {k.bank_id: k for k in BankDapKey.objects.all()}
    banks = [
        {
            "bank": bank,
            "approval": policies.get(bank.pk, ReleasePolicy.Approval.AUTO),
            "dap_key": keys.get(bank.pk),
        }
        for bank in Organization.objects.filter(kind=Organization.Kind.BANK).order_by("name")
    ]
    point = code_signing.mandated_dap_public_point().hex().upper() if current else ""
    return render(
        request,
        "portal/agency/code_signing.html",
        {
            "mandated_dap": current,
            "mandated_point": point,
            "mandated_fingerprint": code_signing.fingerprint(bytes.fromhex(point)) if point else "",
            "dap_form": dap_form,
            "policy_form": policy_form,
            "banks": banks,
            "can_admin": _agency_admin(request),
        },
        status=400 if (dap_form.errors or policy_form.errors) else 200,
    )


@bank_member
@require_http_methods(["GET", "POST"])
def bank_dap_key(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    """The bank's DAP verification public key: its fingerprint, and (bank admins) the form to set it."""
    who = principal(request.user)
    can_admin = who.has_role(bank.pk, Membership.Role.ADMIN)
    form = DapKeyForm(posted(request))
    if request.method == "POST":
        if not can_admin:
            raise PermissionDenied("only the bank's administrators set its DAP key")
        if form.is_valid():
            try:
                key = code_signing.set_bank_dap_key(bank=bank, point=form.cleaned_data["point"], actor=request.user)
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                messages.success(request, f"The DAP key is set (fingerprint {key.fingerprint[:16]}…).")
                return redirect("portal:bank-dap-key", bank=bank.slug)
    return render(
        request,
        "portal/bank/dap_key.html",
        {
            "bank": bank,
            "can_admin": can_admin,
            "can_operate": who.can_operate(bank.pk),
            "key": BankDapKey.objects.filter(bank=bank).first(),
            "form": form,
        },
        status=400 if form.errors else 200,
    )


@bank_member
@require_POST
def release_signature(request: AuthenticatedHttpRequest, bank: Organization, release: int) -> HttpResponse:
    """Give the release's DAP signature (the bank's operators)."""
    require_operator(request, bank)
    record = get_object_or_404(selectors.bank_releases(request.user, bank), pk=release)
    form = DapSignatureForm(request.POST)
    if form.is_valid():
        try:
            release_services.add_dap_signature(
                release=record, signature=form.cleaned_data["signature"], actor=request.user
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, "The DAP signature verifies and is stored.")
            return redirect("portal:bank-release", bank=bank.slug, release=record.pk)
    return render(
        request,
        "portal/bank/release.html",
        {**release_context(request, bank, record), "signature_form": form},
        status=400,
    )


def release_context(request: AuthenticatedHttpRequest, bank: Organization, release: Release) -> dict[str, object]:
    """What the release page shows of approval and signatures (the bank's page of one release)."""
    who = principal(request.user)
    return {
        "bank": bank,
        "can_operate": who.can_operate(bank.pk),
        "can_admin": who.has_role(bank.pk, Membership.Role.ADMIN),
        "release": release,
        "signatures": release_services.signature_status(release),
        "refusal": release_services.deployment_refusal(release),
        "signature_form": DapSignatureForm(),
    }
