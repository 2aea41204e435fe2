"""Django admin: the audit log, read-only (entries are append-only)."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("index", "time", "action", "subject_type", "subject_id", "card_cin", "outcome", "actor_name")
    list_filter = ("action", "outcome", "actor_type")
    search_fields = ("card_cin", "subject_id", "action")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
