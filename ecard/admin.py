"""The admin classes every app uses.

* :class:`ReadOnlyAdmin`, :class:`ReadOnlyInline`: rows that change only through a service (which
  validates and writes the audit log in the same transaction) are shown, never added, changed or
  deleted in the admin.

The admin *site* (the portal's login and second factor) and the audited admin writes are the
portal's: :mod:`portal.admin_site`. This module sits in the project core, below every app
(docs/ARCHITECTURE.md, "Layers"), and imports none of them.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest


class _NoWrites:
    """No add, change or delete from the admin: the rows change only through services."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ReadOnlyAdmin(_NoWrites, admin.ModelAdmin):
    """Rows that change only through services (which write the audit log), never by hand."""


class ReadOnlyInline(_NoWrites, admin.TabularInline):
    extra = 0
    can_delete = False
