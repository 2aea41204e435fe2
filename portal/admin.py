"""Admin of accounts: users and groups (audited), and operators' second-factor devices
(listed and reset through :func:`portal.totp.reset_device`, never
read). See :mod:`portal.admin_site` for the rules every registered model follows."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from rest_framework.authtoken.models import TokenProxy

from ecard.requests import acting_user
from portal import totp
from portal.admin_site import AuditedAdminMixin, audit_admin_write
from portal.models import TotpDevice

for _model in (User, Group, TokenProxy):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
# API tokens are not in the admin at all: DRF's admin shows each key (a credential) in the list, the
# page title and the delete confirmation, and lets staff mint a token for any user. Tokens are
# issued and revoked with ``manage.py drf_create_token [-r]``.


@admin.register(User)
class AuditedUserAdmin(AuditedAdminMixin, UserAdmin):
    """Account administration; each write is in the audit log (field names, never values)."""

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:
                user = self.get_object(request, unquote(id))
                if user is not None:
                    audit_admin_write(request, user, "password_changed")
        return response


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdminMixin, GroupAdmin):
    pass


@admin.register(TotpDevice)
class TotpDeviceAdmin(admin.ModelAdmin):
    list_display = ("user", "confirmed_at", "created_at")
    search_fields = ("user__username",)
    readonly_fields = ("user", "confirmed_at", "last_step", "created_at")
    exclude = ("wrapped_secret",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TotpDevice | None = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: TotpDevice) -> None:
        totp.reset_device(obj, actor=acting_user(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TotpDevice]) -> None:
        for device in queryset:
            totp.reset_device(device, actor=acting_user(request))
