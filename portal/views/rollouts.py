"""Bank rollout pages (issue 7's services): create with groups and thresholds, live progress per
group, approve/start/pause/resume/cancel, failures with reasons."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from ecard.errors import ServiceError
from ecard.requests import AuthenticatedHttpRequest
from issuers.models import Organization
from issuers.roles import principal
from portal import charts
from portal.access import bank_member, require_operator
from portal.forms import RolloutActionForm, RolloutForm, add_service_error, posted
from updates import rollout_selectors, rollouts
from updates.rollout_models import Rollout


def _context(request: AuthenticatedHttpRequest, bank: Organization, **extra: object) -> dict[str, object]:
    return {"bank": bank, "can_operate": principal(request.user).can_operate(bank.pk), **extra}


@bank_member
@require_http_methods(["GET", "POST"])
def rollout_list(request: AuthenticatedHttpRequest, bank: Organization) -> HttpResponse:
    initial = {"release": request.GET.get("release")}
    form = RolloutForm(
        posted(request), releases=rollout_selectors.approved_releases(request.user, bank), initial=initial
    )
    if request.method == "POST":
        require_operator(request, bank)
        if form.is_valid():
            data = form.cleaned_data
            try:
                rollout = rollouts.create_rollout(
                    bank=bank,
                    release=data["release"],
                    actor=request.user,
                    groups=data["groups"],
                    from_version=data["from_version"],
                    success_threshold=data["success_threshold"],
                    error_threshold=data["error_threshold"],
                    retry_count=data["retry_count"],
                    require_approval=data["require_approval"],
                    name=data["name"],
                )
            except ServiceError as exc:
                add_service_error(form, exc, aliases={"cins": "from_version"})
            else:
                messages.success(request, f"Rollout {rollout.pk} is planned for {rollout.total} cards.")
                return redirect("portal:bank-rollout", bank=bank.slug, rollout=rollout.pk)
    listed = rollout_selectors.rollouts_for(request.user).filter(bank=bank).order_by("-created_at")[:100]
    return render(
        request,
        "portal/bank/rollouts.html",
        _context(request, bank, form=form, rollouts=listed),
        status=400 if form.errors else 200,
    )


def _detail_context(request: AuthenticatedHttpRequest, bank: Organization, rollout: Rollout) -> dict[str, object]:
    progress = rollout_selectors.progress(rollout)
    return _context(
        request,
        bank,
        rollout=rollout,
        progress=progress,
        chart=charts.stacked_chart(progress["groups"]),
        failures=rollout_selectors.failure_reasons(rollout),
        upgrade_paths=rollout_selectors.upgrade_paths(rollout),
    )


def run_rollout_action(record: Rollout, action: str, actor: Any, reason: str) -> None:
    """One of the rollout form's actions (``RolloutActionForm``) on ``record``: the bank's rollouts
    and the agency's renewal campaigns alike."""
    if action == "approve":
        rollouts.approve_rollout(rollout=record, actor=actor)
    elif action == "start":
        rollouts.start_rollout(rollout=record, actor=actor)
    elif action == "pause":
        rollouts.pause_rollout(rollout=record, actor=actor, reason=reason)
    elif action == "resume":
        rollouts.resume_rollout(rollout=record, actor=actor)
    else:
        rollouts.cancel_rollout(rollout=record, actor=actor, reason=reason)


@bank_member
@require_http_methods(["GET", "POST"])
def rollout_detail(request: AuthenticatedHttpRequest, bank: Organization, rollout: int) -> HttpResponse:
    record = get_object_or_404(rollout_selectors.rollouts_for(request.user).filter(bank=bank), pk=rollout)
    form = RolloutActionForm(posted(request))
    if request.method == "POST":
        require_operator(request, bank)
        if form.is_valid():
            action, reason = form.cleaned_data["action"], form.cleaned_data["reason"]
            try:
                run_rollout_action(record, action, request.user, reason)
            except ServiceError as exc:
                messages.error(request, exc.message)
            else:
                done = {
                    "approve": "approved",
                    "start": "started",
                    "pause": "paused",
                    "resume": "resumed",
                    "cancel": "cancelled",
                }[action]
                messages.success(request, f"Rollout {record.pk} is {done}.")
            return redirect("portal:bank-rollout", bank=bank.slug, rollout=record.pk)
        record.refresh_from_db()
    template = "portal/bank/_rollout_live.html" if request.GET.get("part") == "live" else "portal/bank/rollout.html"
    return render(
        request,
        template,
        {**_detail_context(request, bank, record), "action_form": form},
        status=400 if form.errors else 200,
    )


@bank_member
@require_GET
def rollout_targets(request: AuthenticatedHttpRequest, bank: Organization, rollout: int) -> HttpResponse:
    record = get_object_or_404(rollout_selectors.rollouts_for(request.user).filter(bank=bank), pk=rollout)
    status = request.GET.get("status") or None
    targets = rollout_selectors.targets_of(record, status)[:500]
    return render(
        request,
        "portal/bank/rollout_targets.html",
        _context(request, bank, rollout=record, targets=targets, status=status),
    )
