"""Django admin: the audit log, read-only (entries are append-only)."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEntry, Checkpoint, WitnessCosignature, WitnessRefusal
from ecard.admin import ReadOnlyAdmin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("index", "time", "action", "subject_type", "subject_id", "card_cin", "outcome", "actor_name")
    exclude = ("leaf_hash",)
    list_filter = ("action", "outcome", "actor_type")
    search_fields = ("card_cin", "subject_id", "action")


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    """Signed checkpoints, read-only (they are signed by the service, never edited)."""

    list_display = ("size", "created_at", "key_id")
    readonly_fields = ("size", "text", "key_id", "created_at")
    exclude = ("root_hash",)


@admin.register(WitnessCosignature)
class WitnessCosignatureAdmin(ReadOnlyAdmin):
    """Witnesses' cosignatures, verified before they were stored (read-only)."""

    list_display = ("checkpoint", "witness", "key_id", "timestamp", "created_at")


@admin.register(WitnessRefusal)
class WitnessRefusalAdmin(ReadOnlyAdmin):
    """Checkpoints a witness refused (evidence of a fork or a misconfiguration; read-only)."""

    list_display = ("checkpoint", "witness", "status", "reason", "created_at")
