"""Models of the audit app: the entries of the transparency log.

Entries are append-only. The Merkle tree over them (RFC 9162) and signed checkpoints are
built on top of this table by the transparency-log code (:mod:`audit.merkle`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


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
    time = models.DateTimeField()
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
    receipt = models.CharField(max_length=512, blank=True, help_text="card receipt, hex")
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("index",)
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"#{self.index} {self.action} {self.subject_type}:{self.subject_id} {self.outcome}"
