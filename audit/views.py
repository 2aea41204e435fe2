"""Portal pages of the audit log (server-rendered; thin views over :mod:`audit.selectors`).

Login required; the same visibility rules as the API (:func:`audit.selectors.entries_for`).
"""

from __future__ import annotations

import base64

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_http_methods

from audit import security, selectors
from audit.apis import export_response
from audit.merkle import ProofError
from audit.models import AuditEntry

PAGE_SIZE = 50


def _b64(data: bytes | None) -> str:
    return base64.b64encode(bytes(data)).decode() if data is not None else ""


class CheckpointForm(forms.Form):
    checkpoint = forms.CharField(
        label="Checkpoint you saved earlier",
        widget=forms.Textarea(
            attrs={"rows": 7, "cols": 80, "spellcheck": "false", "aria-describedby": "checkpoint-help"}
        ),
        max_length=64 * 1024,
        help_text="The whole signed note: origin, size and root lines, a blank line, and the signature line(s).",
    )


def _entries_for(request: HttpRequest) -> QuerySet[AuditEntry]:
    return selectors.entries_for(request.user, card_cins=selectors.held_card_cins(request.user))


@login_required
@require_GET
def log_browser(request: HttpRequest) -> HttpResponse:
    entries = _entries_for(request)
    filters = selectors.EntryFilter(request.GET or None, queryset=entries)
    page = Paginator(filters.qs.order_by("-index") if filters.is_bound else entries.order_by("-index"), PAGE_SIZE)
    page_obj = page.get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    size, root = selectors.current_head(fresh=False)  # entries_for sequenced the pending entries
    return render(
        request,
        "audit/log.html",
        {
            "filter": filters,
            "page_obj": page_obj,
            "query": query.urlencode(),
            "head_size": size,
            "head_root": _b64(root),
            "can_export": selectors.can_export(request.user),
            "can_read_security": selectors.can_read_security_events(request.user),
            "latest": selectors.latest_checkpoint(),
        },
    )


@login_required
@require_GET
def entry_detail(request: HttpRequest, index: int) -> HttpResponse:
    entry = get_object_or_404(_entries_for(request), index=index)
    try:
        check = selectors.checked_inclusion(entry)
    except ProofError as exc:
        check = selectors.EntryProof(0, b"", [], None, False, str(exc))
    return render(
        request,
        "audit/entry.html",
        {
            "entry": entry,
            "entry_json": entry.as_entry(),
            "leaf_hash": entry.stored_leaf_hash().hex(),
            "check": check,
            "root": _b64(check.root),
            "proof": [_b64(h) for h in check.proof],
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def checkpoints(request: HttpRequest) -> HttpResponse:
    form = CheckpointForm(request.POST or None)
    result = None
    if request.method == "POST" and form.is_valid():
        result = selectors.check_checkpoint(form.cleaned_data["checkpoint"])
    history = Paginator(selectors.checkpoints(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "audit/checkpoints.html",
        {
            "form": form,
            "result": result,
            "result_root": _b64(result.root) if result else "",
            "result_head_root": _b64(result.head_root) if result else "",
            "result_proof": [_b64(h) for h in result.proof] if result else [],
            "page_obj": history,
            "verifier_key": selectors.published_verifier_key(),
            "origin": selectors.log_origin(),
            "can_export": selectors.can_export(request.user),
        },
        status=200,
    )


@login_required
@require_GET
def export(request: HttpRequest) -> StreamingHttpResponse:
    if not selectors.can_export(request.user):
        raise PermissionDenied("only the agency and regulators export the whole log")
    checkpoint = selectors.latest_checkpoint()
    if checkpoint is None:
        raise Http404("the log has no signed checkpoint yet")
    return export_response(checkpoint)


@login_required
@require_GET
def security_events(request: HttpRequest) -> HttpResponse:
    """The security event log (agency and regulators; a 404 for everyone else)."""
    if not selectors.can_read_security_events(request.user):
        security.record(security.Kind.NOT_FOUND, request=request, status=404, reason="security event log")
        security.mark_logged(request)
        raise Http404("no such page")
    events = selectors.security_events_for(request.user)
    filters = selectors.SecurityEventFilter(request.GET or None, queryset=events)
    page = Paginator(filters.qs if filters.is_bound else events, PAGE_SIZE)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "audit/security.html",
        {
            "filter": filters,
            "page_obj": page.get_page(request.GET.get("page")),
            "query": query.urlencode(),
            "can_export": selectors.can_export(request.user),
            "can_read_security": True,
        },
    )
