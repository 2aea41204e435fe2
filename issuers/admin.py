"""Django admin for operators. Organisations are editable, members are shown (they join by invitation);
keys appear as metadata only."""

from __future__ import annotations

from django.contrib import admin

from issuers.models import AidRange, Membership, Organization, SsdTemplate


class MembershipInline(admin.TabularInline):
    """Read-only: members join by accepting an invitation (issuers.services), with its rules and
    audit entries; the admin must not be a way around them."""

    model = Membership
    extra = 0
    fields = ("user", "role", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class AidRangeInline(admin.TabularInline):
    model = AidRange
    extra = 0
    readonly_fields = ("prefix",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "kind", "is_active", "created_at")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "slug")
    inlines = (MembershipInline, AidRangeInline)


@admin.register(SsdTemplate)
class SsdTemplateAdmin(admin.ModelAdmin):
    list_display = ("organization", "management", "scp", "scp_i", "key_algorithm", "key_length")
