"""Admin: operators' second-factor devices can be listed and deleted (reset), never read."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from portal.models import TotpDevice


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
