"""Regulator reports (charts and CSV) and a card at a moment, rebuilt from the transparency log
(thin views over :mod:`audit.reports`). Only the agency and regulators: for everyone else these
pages do not exist (404)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit import reports, security
from ecard.requests import AuthenticatedHttpRequest
from issuers import selectors as issuer_selectors
from portal.charts import bar_chart


def oversight_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @login_required
    @wraps(view)
    def wrapper(request: AuthenticatedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not reports.can_read_reports(request.user):
            security.record(security.Kind.NOT_FOUND, request=request, status=404, reason="oversight page")
            security.mark_logged(request)
            raise Http404("no such page")
        return view(request, *args, **kwargs)

    return wrapper


def _form(request: AuthenticatedHttpRequest) -> reports.ReportForm:
    """The period and bank asked for; without any, last month for all banks (the fields filled in)."""
    today = timezone.now().date()
    banks = issuer_selectors.report_bank_choices()
    if not request.GET:
        first, last = reports.last_month(today)
        return reports.ReportForm(
            {"date_from": first.isoformat(), "date_to": last.isoformat()}, today=today, banks=banks
        )
    return reports.ReportForm(request.GET, today=today, banks=banks)


@oversight_only
@require_GET
def report_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = _form(request)
    if not form.is_valid():
        return render(request, "portal/oversight/reports.html", {"form": form, "reports": []}, status=400)
    period = form.period()
    built = [
        {"report": r, "chart": bar_chart(r.chart), "chart_id": f"chart-{r.slug}"} for r in reports.all_reports(period)
    ]
    query = request.GET.copy()
    query["date_from"], query["date_to"] = period.first.isoformat(), period.last.isoformat()
    query["bank"] = period.bank
    return render(
        request,
        "portal/oversight/reports.html",
        {"form": form, "period": period, "reports": built, "query": query.urlencode()},
    )


@oversight_only
@require_GET
def report_csv(request: AuthenticatedHttpRequest, report: str) -> HttpResponse:
    build = reports.REPORTS.get(report)
    if build is None:
        raise Http404("no such report")
    form = _form(request)
    if not form.is_valid():
        errors = "; ".join(f"{name}: {' '.join(str(m) for m in msgs)}" for name, msgs in form.errors.items())
        return HttpResponse(f"Bad request: {errors}\n", status=400, content_type="text/plain; charset=utf-8")
    period = form.period()
    body = reports.report_csv(build(period), period)
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    bank = f"-{period.bank}" if period.bank else ""
    name = f"ecard-{report}-{period.first.isoformat()}-{period.last.isoformat()}{bank}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@oversight_only
@require_GET
def card_at(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = reports.CardAtForm(request.GET or None)
    context: dict[str, Any] = {"form": form, "state": None}
    if not form.is_bound:
        return render(request, "portal/oversight/card_at.html", context)
    if not form.is_valid():
        return render(request, "portal/oversight/card_at.html", context, status=400)
    cin = form.cleaned_data["cin"]
    at = form.cleaned_data["at"] or timezone.now()
    if not reports.card_in_log(cin):
        context["unknown"] = cin
        return render(request, "portal/oversight/card_at.html", context, status=404)
    context["state"] = reports.card_at(cin, at)
    return render(request, "portal/oversight/card_at.html", context)
