"""The platform's Django admin site and the admin's audited writes.

* :class:`EcardAdminSite` has no login form of its own. ``/admin/login/`` redirects to the
  portal's login (GET) or is the portal's login view (POST): the same throttle
  (:mod:`portal.ratelimit`) and the same second factor (:mod:`portal.totp`). A user with a second
  factor reaches the admin only with a session that passed it; any other session is logged out.
  ``ecard.apps.EcardAdminConfig`` installs it (by name) as Django's default admin site.
* :class:`AuditedAdminMixin`: for the few models the admin does change (user accounts, groups,
  resetting a second factor), every addition, change and deletion writes an
  audit entry in the admin's transaction. ``ADMIN_WRITES`` lists them; a test checks that every
  other registered model is read-only (:class:`ecard.admin.ReadOnlyAdmin`).
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import REDIRECT_FIELD_NAME, logout
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from audit.services import record_event
from portal import totp
from portal.views.auth import PortalLoginView

# Models the admin may add, change or delete, and the audited path each goes through.
ADMIN_WRITES: dict[str, str] = {
    "auth.User": "AuditedAdminMixin (audit entry per addition, change, password change, deletion)",
    "auth.Group": "AuditedAdminMixin",
    "portal.TotpDevice": "delete only, through portal.totp.reset_device (audited)",
}


class EcardAdminSite(admin.AdminSite):
    site_header = "E-Card platform administration"
    site_title = "E-Card admin"

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and totp.session_passed_second_factor(request)

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        index = reverse("admin:index", current_app=self.name)
        target = request.POST.get(REDIRECT_FIELD_NAME) or request.GET.get(REDIRECT_FIELD_NAME) or index
        if not url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
            target = index
        if request.method == "POST":
            # A password posted here is checked by the portal's view: throttled, second factor.
            # The portal's login answers with a page or a redirect: both are HttpResponses.
            return cast(HttpResponse, PortalLoginView.as_view(next_page=target)(request))
        if request.user.is_authenticated:
            if not totp.session_passed_second_factor(request):
                # A session that skipped the second factor is not a session.
                logout(request)
            elif request.user.is_active and request.user.is_staff:
                return redirect(target)
            else:
                raise PermissionDenied("this account may not use the administration")
        return redirect_to_login(target, settings.LOGIN_URL)


def audit_admin_write(request: HttpRequest, obj: Model, verb: str, fields: list[str] | None = None) -> None:
    details: dict[str, Any] = {"via": "admin", "model": obj._meta.label}
    if fields is not None:
        details["fields"] = sorted(str(name) for name in fields)  # names only, never values
    with transaction.atomic():
        record_event(
            action=f"admin.{obj._meta.model_name}.{verb}",
            subject_type=(obj._meta.model_name or "")[:32],
            subject_id=str(obj.pk),
            actor=request.user,
            details=details,
        )


class AuditedAdminMixin:
    """Every write the admin makes to this model records an audit entry (who, what, which fields)."""

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)  # type: ignore[misc]
            audit_admin_write(request, obj, "changed" if change else "added", list(getattr(form, "changed_data", [])))

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        with transaction.atomic():
            audit_admin_write(request, obj, "deleted")
            super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic():
            for obj in queryset:
                audit_admin_write(request, obj, "deleted")
            super().delete_queryset(request, queryset)  # type: ignore[misc]
