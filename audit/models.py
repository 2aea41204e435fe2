"""Models of the audit app: the transparency log (docs/audit.md).

* :class:`AuditEntry` — one leaf of the log. Its columns are the entry (format 1 of
  :mod:`audit.export_format`); :meth:`AuditEntry.as_entry` rebuilds the exact entry object
  from them. A row is written by the transaction of the change it records with ``index`` and
  ``leaf_hash`` NULL (*pending*); the sequencer (:func:`audit.services.sequence_pending`) later
  gives committed pending rows the next indices and stores their RFC 9162 leaf hashes.
* :class:`MerkleNode` — every completed perfect subtree ``(level, index)`` of the tree
  (level 0: the leaf hashes), written once at append time, so roots and proofs are O(log n)
  lookups.
* :class:`LogState` — a singleton row: tree size and the frontier (compact range). Only the
  sequencer writes it, under its lock, so indices have no duplicates and no gaps.
* :class:`Checkpoint` — signed tree heads (C2SP tlog-checkpoint notes).
* :class:`WitnessCosignature` / :class:`WitnessRefusal` — what the configured witnesses answered
  (c2sp.org/tlog-witness): cosignature lines published with the checkpoint, or a refusal kept as
  evidence.

Rows are append-only: nothing in the platform updates or deletes them (the sequencer fills in a
pending entry's ``index`` and ``leaf_hash`` once).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from audit.export_format import ExportFormatError, make_entry


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

    index = models.BigIntegerField(
        unique=True, null=True, blank=True, help_text="position in the log, 0-based, no gaps; NULL until sequenced"
    )
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
    action = models.CharField(max_length=64)
    subject_type = models.CharField(max_length=32)
    subject_id = models.CharField(max_length=128)
    card_cin = models.CharField(max_length=64, blank=True)
    organization_slug = models.CharField(
        max_length=64, blank=True, help_text="the organisation the event concerns (e.g. the bank)"
    )
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.SUCCESS)
    reason = models.TextField(blank=True)
    receipt = models.CharField(max_length=512, blank=True, help_text="card receipt, lowercase hex")
    details = models.JSONField(default=dict, blank=True)
    leaf_hash = models.BinaryField(
        max_length=32, null=True, blank=True, help_text="RFC 9162 leaf hash of the canonical entry (set when sequenced)"
    )

    class Meta:
        ordering = ("index",)
        verbose_name_plural = "audit entries"
        # The readers' filters (docs/audit.md, API) cover sequenced entries only, so their indexes
        # are partial: a pending row's INSERT touches none of them, only the sequencer's UPDATE does.
        indexes = [
            # the sequencer's queue: pending rows in insertion order
            models.Index(fields=["id"], condition=models.Q(index__isnull=True), name="audit_entry_pending"),
            *(
                models.Index(fields=[name], condition=models.Q(index__isnull=False), name=f"audit_entry_{short}")
                for name, short in (
                    ("time", "time"),
                    ("action", "action"),
                    ("card_cin", "card"),
                    ("organization_slug", "org"),
                )
            ),
        ]

    def __str__(self) -> str:
        where = "pending" if self.index is None else f"#{self.index}"
        return f"{where} {self.action} {self.subject_type}:{self.subject_id} {self.outcome}"

    @property
    def sequenced(self) -> bool:
        return self.index is not None

    def stored_leaf_hash(self) -> bytes:
        """The leaf hash the sequencer stored (every sequenced row has one)."""
        if self.leaf_hash is None:
            raise ValueError(f"{self} has no stored leaf hash: it is not sequenced yet")
        return bytes(self.leaf_hash)

    def as_entry(self, index: int | None = None) -> dict[str, Any]:
        """The format-1 entry object this row holds (what the log hashed and what exports carry).

        Only for a sequenced row (the entry's ``index`` is part of its leaf)."""
        if index is None:
            index = self.index
        if index is None:
            raise ExportFormatError("a pending entry has no index yet, so it is no format-1 entry")
        return make_entry(
            index=index,
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
    """The one row that says how big the log is; only the sequencer writes it, under its lock."""

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

    @property
    def published_text(self) -> str:
        """The note as published: the log's signed note with the witnesses' cosignature lines appended."""
        return self.text + "".join(c.line for c in self.cosignatures.all())


class WitnessCosignature(models.Model):
    """A witness's cosignature/v1 line on a checkpoint (c2sp.org/tlog-cosignature), verified with the
    witness's configured key before it was stored; published appended to the checkpoint's note."""

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="cosignatures")
    witness = models.CharField(max_length=64, help_text="the witness's name in ECARD_WITNESSES")
    key_name = models.CharField(max_length=255, help_text="the witness key's name, as in its signature line")
    key_id = models.CharField(max_length=8, help_text="hex key id (type 0x04)")
    timestamp = models.BigIntegerField(help_text="POSIX seconds the witness signed at")
    line = models.TextField(help_text="the note signature line, with its final newline")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("checkpoint", "key_name", "key_id")
        constraints = [
            models.UniqueConstraint(fields=["checkpoint", "witness"], name="audit_cosignature_once_per_witness")
        ]

    def __str__(self) -> str:
        return f"cosignature of {self.witness} on size {self.checkpoint.size}"


class WitnessRefusal(models.Model):
    """A witness refused a checkpoint (a fork, a rollback, a bad proof or a misconfiguration): kept
    as evidence, once per checkpoint and witness, with an ``audit.witness_refused`` entry."""

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="witness_refusals")
    witness = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField(help_text="the witness's HTTP status")
    reason = models.TextField()
    response = models.TextField(blank=True, help_text="the witness's answer (truncated)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [models.UniqueConstraint(fields=["checkpoint", "witness"], name="audit_refusal_once_per_witness")]

    def __str__(self) -> str:
        return f"{self.witness} refused size {self.checkpoint.size} ({self.status})"


class SecurityEvent(models.Model):
    """A refused action: a failed login, a bad API credential, a 403, a 404 on an object route, a
    refused consent or upload (``audit.security``). Kept apart from the transparency log: it is
    evidence of attempts, not of state changes, so it is neither signed nor exported, and it is
    bounded (coalesced per minute, capped per source and overall, purged after a retention time).
    Only the agency and regulators read it. Never holds a password, token or key."""

    class Kind(models.TextChoices):
        LOGIN_FAILED = "login_failed", "Login refused (wrong username or password)"
        LOGIN_THROTTLED = "login_throttled", "Login refused (too many failures)"
        SECOND_FACTOR_FAILED = "second_factor_failed", "Second factor code refused"
        API_AUTH_FAILED = "api_auth_failed", "API credential refused"
        FORBIDDEN = "forbidden", "Forbidden (403)"
        NOT_FOUND = "not_found", "Not found on an object route (404)"
        CONSENT_REFUSED = "consent_refused", "Bank enrollment (consent) refused"
        UPLOAD_REJECTED = "upload_rejected", "Release upload rejected"
        FLOOD = "flood", "More refusals from one source than are recorded individually"

    bucket = models.DateTimeField(help_text="the minute the events fell in (events coalesce per minute)")
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.PositiveIntegerField(default=1)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(
        max_length=40, blank=True, help_text="the account concerned; an unknown name is kept as a short prefix only"
    )
    source = models.CharField(max_length=64, blank=True, help_text="client address")
    method = models.CharField(max_length=8, blank=True)
    path = models.CharField(max_length=200, blank=True, help_text="without the query string")
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    organization_slug = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    key = models.CharField(max_length=32, help_text="digest of what coalesces (kind, source, account, route, reason)")

    class Meta:
        ordering = ("-last_seen", "-id")
        constraints = [models.UniqueConstraint(fields=["key", "bucket"], name="audit_security_event_coalesce")]
        indexes = [
            models.Index(fields=["last_seen"], name="audit_secev_last_seen"),
            models.Index(fields=["kind", "last_seen"], name="audit_secev_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} ×{self.count} {self.username or '-'}@{self.source or '-'} {self.path}"
