"""Django admin for operators: organisations, members, AID ranges and SSD templates, read-only.

They change only through :mod:`issuers.services` (bank admission, members, templates, activation),
which validate and write the audit log; the admin shows them. Keys appear as metadata only.
"""

from __future__ import annotations

from django.contrib import admin

from ecard.admin import ReadOnlyAdmin, ReadOnlyInline
from issuers.models import AidRange, Membership, Organization, SsdTemplate


class MembershipInline(ReadOnlyInline):
    model = Membership
    fields = ("user", "role")
    readonly_fields = fields


class AidRangeInline(ReadOnlyInline):
    model = AidRange
    readonly_fields = ("prefix",)


@admin.register(Organization)
class OrganizationAdmin(ReadOnlyAdmin):
    list_display = ("name", "slug", "kind", "is_active", "created_at")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "slug")
    inlines = (MembershipInline, AidRangeInline)


@admin.register(SsdTemplate)
class SsdTemplateAdmin(ReadOnlyAdmin):
    list_display = ("organization", "management", "scp", "scp_i", "key_algorithm", "key_length")
