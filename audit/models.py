"""Models of the audit app: the transparency log (docs/audit.md).

* :class:`AuditEntry` — one leaf of the log. Its columns are the entry (format 1 of
  :mod:`audit.export_format`); :meth:`AuditEntry.as_entry` rebuilds the exact entry object
  from them, and ``leaf_hash`` is the RFC 9162 leaf hash computed when it was appended.
* :class:`MerkleNode` — every completed perfect subtree ``(level, index)`` of the tree
  (level 0: the leaf hashes), written once at append time, so roots and proofs are O(log n)
  lookups.
* :class:`LogState` — a singleton row: tree size and the frontier (compact range). Appends
  lock it, which serialises them across processes (no duplicate index, no gaps).
* :class:`Checkpoint` — signed tree heads (C2SP tlog-checkpoint notes).

Rows are append-only: nothing in the platform updates or deletes them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from audit.export_format import make_entry


class AuditEntry(models.Model):
    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"
        DENIED = "denied", "Denied"
        PENDING = "pending", "Pending"

    class ActorType(models.TextChoices):
        USER = "user", "User"
        SYSTEM = "system", "System"
        AGENT = "agent", "Client agent"

    index = models.BigIntegerField(unique=True, help_text="position in the log, 0-based, no gaps")
    time = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=8, choices=ActorType.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True)
    actor_org = models.ForeignKey(
        "issuers.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_org_slug = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    subject_type = models.CharField(max_length=32)
    subject_id = models.CharField(max_length=128)
    card_cin = models.CharField(max_length=64, blank=True, db_index=True)
    organization_slug = models.CharField(
        max_length=64, blank=True, db_index=True, help_text="the organisation the event concerns (e.g. the bank)"
    )
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.SUCCESS)
    reason = models.TextField(blank=True)
    receipt = models.CharField(max_length=512, blank=True, help_text="card receipt, lowercase hex")
    details = models.JSONField(default=dict, blank=True)
    leaf_hash = models.BinaryField(max_length=32, help_text="RFC 9162 leaf hash of the canonical entry")

    class Meta:
        ordering = ("index",)
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"#{self.index} {self.action} {self.subject_type}:{self.subject_id} {self.outcome}"

    def as_entry(self) -> dict[str, Any]:
        """The format-1 entry object this row holds (what the log hashed and what exports carry)."""
        return make_entry(
            index=self.index,
            time=self.time,
            actor_type=self.actor_type,
            actor_id=self.actor_name,
            actor_organisation=self.actor_org_slug,
            action=self.action,
            subject_type=self.subject_type,
            subject_id=self.subject_id,
            card=self.card_cin,
            organisation=self.organization_slug,
            outcome=self.outcome,
            reason=self.reason,
            receipt=self.receipt,
            details=self.details,
        )


class MerkleNode(models.Model):
    """A completed perfect subtree: covers leaves ``[index * 2**level, (index + 1) * 2**level)``."""

    pk = models.CompositePrimaryKey("level", "index")
    level = models.PositiveSmallIntegerField()
    index = models.BigIntegerField()
    hash = models.BinaryField(max_length=32)

    class Meta:
        ordering = ("level", "index")

    def __str__(self) -> str:
        return f"node ({self.level}, {self.index})"


class LogState(models.Model):
    """The one row that says how big the log is; appends lock it (``select_for_update``)."""

    SINGLETON = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON)
    size = models.BigIntegerField(default=0)
    frontier = models.JSONField(default=dict, help_text="CompactRange.to_dict() for `size`")

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="logstate_singleton")]

    def __str__(self) -> str:
        return f"log of {self.size} entries"


class Checkpoint(models.Model):
    """A signed tree head: C2SP tlog-checkpoint body in a signed note (``text``)."""

    size = models.BigIntegerField(unique=True)
    root_hash = models.BinaryField(max_length=32)
    text = models.TextField(help_text="the signed note, exactly as published")
    key_id = models.CharField(max_length=8, help_text="hex key id of the signing key")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-size",)
        get_latest_by = "size"

    def __str__(self) -> str:
        return f"checkpoint at size {self.size}"
