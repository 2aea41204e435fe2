"""Django admin for operators: organisations, members, AID ranges and SSD templates, read-only.

They change only through :mod:`issuers.services` (bank admission, members, templates, activation),
which validate and write the audit log; the admin shows them. Keys appear as metadata only.
"""

from __future__ import annotations

from django.contrib import admin

from ecard.admin import ReadOnlyAdmin, ReadOnlyInline
from issuers.models import AidRange, BankKeyService, Membership, Organization, SsdTemplate


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


@admin.register(BankKeyService)
class BankKeyServiceAdmin(ReadOnlyAdmin):
    """Registered through issuers.key_services (agency admins), which pins the certificate and audits."""

    list_display = ("organization", "endpoint", "is_active", "reachable", "checked_at", "oce_not_after")
    list_filter = ("is_active", "reachable")
    search_fields = ("organization__name", "organization__slug", "endpoint", "certificate_sha256")
