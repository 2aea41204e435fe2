"""Django admin for operators. Organisations and members are editable; keys appear as metadata only."""

from __future__ import annotations

from django.contrib import admin

from issuers.models import AidRange, Membership, Organization, SsdTemplate


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


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
