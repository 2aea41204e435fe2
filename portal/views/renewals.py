"""Validity and renewal pages (issue 19): the agency's validity policy and its renewal campaigns
(planned with the rollouts' waves and thresholds, started, paused, resumed, cancelled, with
progress per wave), and a citizen renewing their own card."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from cards import validity
from cards.models import Card
from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers.models import Organization
from issuers.roles import principal
from portal import charts
from portal.access import agency_required, citizen_required
from portal.forms import RenewalCampaignForm, RolloutActionForm, ValidityPolicyForm, add_service_error, posted
from portal.views.rollouts import run_rollout_action
from updates import renewal, rollout_selectors
from updates.renewal_campaign import create_renewal_rollout
from updates.rollout_models import Rollout


def _agency(request: AuthenticatedHttpRequest) -> Organization:
    agency = validity.agency_of(request.user)
    if agency is None:
        raise PermissionDenied("these pages are for the agency")
    return agency


def _require_operator(request: AuthenticatedHttpRequest, agency: Organization) -> None:
    if not principal(request.user).can_operate(agency.pk):
        raise PermissionDenied("your role at the agency is read-only")


@agency_required
@require_http_methods(["GET", "POST"])
def renewals(request: AuthenticatedHttpRequest) -> HttpResponse:
    agency = _agency(request)
    policy = validity.policy_of(agency)
    which = request.POST.get("form") if request.method == "POST" else None
    policy_form = ValidityPolicyForm(
        posted(request) if which == "policy" else None,
        initial={"years": policy.years, "renew_within_days": policy.renew_within_days},
    )
    campaign_form = RenewalCampaignForm(posted(request) if which == "campaign" else None)
    if which == "policy":
        _require_operator(request, agency)
        if policy_form.is_valid():
            try:
                validity.set_policy(agency=agency, actor=request.user, **policy_form.cleaned_data)
            except ServiceError as exc:
                add_service_error(policy_form, exc)
            else:
                messages.success(request, "The validity policy is saved.")
                return redirect("portal:agency-renewals")
    elif which == "campaign":
        _require_operator(request, agency)
        if campaign_form.is_valid():
            data = campaign_form.cleaned_data
            try:
                rollout = create_renewal_rollout(
                    agency=agency,
                    actor=request.user,
                    groups=data["groups"],
                    success_threshold=data["success_threshold"],
                    error_threshold=data["error_threshold"],
                    retry_count=data["retry_count"],
                    name=data["name"],
                )
            except ServiceError as exc:
                add_service_error(campaign_form, exc)
            else:
                messages.success(request, f"Renewal campaign {rollout.pk} is planned for {rollout.total} cards.")
                return redirect("portal:agency-renewal", rollout=rollout.pk)
    campaigns = rollout_selectors.rollouts_for(request.user).filter(bank=agency, target_kind=Rollout.Target.RENEW)[:50]
    failed = bool(policy_form.errors or campaign_form.errors)
    return render(
        request,
        "portal/agency/renewals.html",
        {
            "agency": agency,
            "policy": policy,
            "policy_form": policy_form,
            "form": campaign_form,
            "nearing": validity.cards_nearing_expiry(agency).count(),
            "horizon": validity.renewal_horizon(agency),
            "campaigns": campaigns,
            "can_operate": principal(request.user).can_operate(agency.pk),
        },
        status=400 if failed else 200,
    )


@agency_required
@require_http_methods(["GET", "POST"])
def renewal_detail(request: AuthenticatedHttpRequest, rollout: int) -> HttpResponse:
    agency = _agency(request)
    record = get_object_or_404(
        rollout_selectors.rollouts_for(request.user).filter(bank=agency, target_kind=Rollout.Target.RENEW), pk=rollout
    )
    form = RolloutActionForm(posted(request))
    if request.method == "POST":
        _require_operator(request, agency)
        if form.is_valid():
            action, reason = form.cleaned_data["action"], form.cleaned_data["reason"]
            try:
                run_rollout_action(record, action, request.user, reason)
            except ServiceError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(request, f"Renewal campaign {record.pk}: {action} done.")
            return redirect("portal:agency-renewal", rollout=record.pk)
        record.refresh_from_db()
    progress = rollout_selectors.progress(record)
    live = request.GET.get("part") == "live"
    return render(
        request,
        "portal/bank/_rollout_live.html" if live else "portal/agency/renewal.html",
        {
            "rollout": record,
            "progress": progress,
            "chart": charts.stacked_chart(progress["groups"]),
            "failures": rollout_selectors.failure_reasons(record),
            "action_form": form,
            "can_operate": principal(request.user).can_operate(agency.pk),
        },
        status=400 if form.errors else 200,
    )


@citizen_required
@require_POST
def renew_card(request: AuthenticatedHttpRequest, cin: str) -> HttpResponse:
    card = get_object_or_404(Card, cin=cin.upper(), holder=request.user)
    try:
        job = renewal.request_renewal(card=card, actor=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            f"Your card will be renewed until {job.params['valid_until']} the next time you present it.",
        )
    return redirect("portal:card", cin=card.cin)
