"""Django admin for operators: cards and their content, read-mostly (changes go through services)."""

from __future__ import annotations

from django.contrib import admin

from cards.models import AppletInstance, Card, CardJob, CardPackage, Enrollment, SecurityDomain
from ecard.admin import ReadOnlyAdmin, ReadOnlyInline


class SecurityDomainInline(ReadOnlyInline):
    model = SecurityDomain
    fields = ("aid", "organization", "is_isd", "privileges", "key_kvn", "lifecycle", "state")
    readonly_fields = fields


@admin.register(Card)
class CardAdmin(ReadOnlyAdmin):
    list_display = ("cin", "serial", "lifecycle", "scp", "issued_by", "emulated", "created_at")
    list_filter = ("lifecycle", "scp", "emulated")
    search_fields = ("cin", "serial")
    exclude = ("kdd",)
    inlines = (SecurityDomainInline,)


@admin.register(SecurityDomain)
class SecurityDomainAdmin(ReadOnlyAdmin):
    list_display = ("aid", "card", "organization", "is_isd", "key_kvn", "lifecycle", "state")
    list_filter = ("state", "lifecycle", "is_isd", "organization")
    search_fields = ("aid", "card__cin")


@admin.register(AppletInstance)
class AppletInstanceAdmin(ReadOnlyAdmin):
    list_display = ("instance_aid", "package_aid", "package_version", "security_domain", "lifecycle")
    search_fields = ("instance_aid", "package_aid")


@admin.register(Enrollment)
class EnrollmentAdmin(ReadOnlyAdmin):
    list_display = ("card", "bank", "status", "consented_at")
    list_filter = ("status", "bank")


@admin.register(CardJob)
class CardJobAdmin(ReadOnlyAdmin):
    list_display = ("id", "card", "kind", "organization", "state", "attempts", "created_at", "finished_at")
    list_filter = ("state", "kind", "organization")
    search_fields = ("card__cin",)


@admin.register(CardPackage)
class CardPackageAdmin(ReadOnlyAdmin):
    list_display = ("package_aid", "package_version", "security_domain", "loaded_at")
    search_fields = ("package_aid", "security_domain__card__cin")
