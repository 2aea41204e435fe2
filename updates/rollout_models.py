"""Models of staged rollouts: a bank's release pushed to a set of cards in groups (waves).

A :class:`Rollout` upgrades one package of a bank to one release on a set of cards: every card
whose bank security domain holds the package (at a given version), or an explicit list of cards.
Its targets are split into cumulative groups (e.g. 10 % → 50 % → 100 %); a group's cards get a
card job when the group is activated, and the next group is activated once the group reaches
its success threshold. A group whose failures reach the error threshold pauses the rollout.

The per-card rows (:class:`RolloutTarget`) are written by set-based SQL (``updates.rollouts``),
never one ORM call per card; the group counters are kept in step with them by the same
statements and by the OTA engine's ``job_state_changed`` signal (``updates.receivers``), in the same transaction.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from issuers.models import Organization, hex_validator


class Rollout(models.Model):
    class State(models.TextChoices):
        AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval (four eyes)"
        READY = "ready", "Ready to start"
        SCHEDULED = "scheduled", "Started, waiting for its start time"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        CANCELLED = "cancelled", "Cancelled"
        COMPLETED = "completed", "Completed"

    class Target(models.TextChoices):
        PACKAGE = "package", "Cards with the package (at a version)"
        CARDS = "cards", "Explicit list of cards"
        INSTALL = "install", "Install the package on cards without it"
        ROTATE = "rotate", "Rotate the keys of the bank's security domains"
        RENEW = "renew", "Renew cards nearing expiry (validity and ISD keys)"

    OPEN_STATES = (State.AWAITING_APPROVAL, State.READY, State.SCHEDULED, State.RUNNING, State.PAUSED)

    bank = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="rollouts")
    release = models.ForeignKey(
        "updates.Release",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="rollouts",
        help_text="empty for a key rotation",
    )
    name = models.CharField(max_length=200, blank=True)
    package_aid = models.CharField(max_length=32, blank=True, validators=[hex_validator])
    install_instances = models.JSONField(
        default=list,
        blank=True,
        help_text="an install campaign's instances: [{instance_aid, module_aid, privileges, install_params}]",
    )
    from_version = models.CharField(max_length=16, blank=True, help_text="major.minor; blank: any other version")
    target_kind = models.CharField(max_length=8, choices=Target.choices, default=Target.PACKAGE)
    group_spec = models.JSONField(default=list, help_text='cumulative bounds as given, e.g. ["10%", "50%", "100%"]')
    success_threshold = models.PositiveSmallIntegerField(
        default=100, help_text="percent of a group's cards that must succeed before the next group starts"
    )
    error_threshold = models.PositiveSmallIntegerField(
        default=20, help_text="percent of a group's cards failed at which the rollout pauses"
    )
    retry_count = models.PositiveSmallIntegerField(default=2, help_text="retries of a failed card")
    retry_backoff = models.PositiveIntegerField(
        default=300, help_text="seconds before the first retry of a failed card; doubled for each further retry"
    )
    require_approval = models.BooleanField(default=False)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    start_at = models.DateTimeField(null=True, blank=True, help_text="not before this time")
    state = models.CharField(max_length=20, choices=State.choices, default=State.READY, db_index=True)
    pause_reason = models.TextField(blank=True)
    total = models.PositiveIntegerField(default=0, help_text="number of target cards")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=("bank", "package_aid"),
                condition=models.Q(state__in=("awaiting_approval", "ready", "scheduled", "running", "paused")),
                name="one_open_rollout_per_package",
            )
        ]

    def __str__(self) -> str:
        return f"rollout {self.pk} of {self.package_aid} ({self.state})"


class RolloutGroup(models.Model):
    """One wave of a rollout, with its counters (kept in step with its targets)."""

    class State(models.TextChoices):
        WAITING = "waiting", "Waiting"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="groups")
    index = models.PositiveSmallIntegerField(help_text="1-based, in order of activation")
    bound = models.CharField(max_length=16, help_text='cumulative bound as given: "10%" or a card count')
    state = models.CharField(max_length=8, choices=State.choices, default=State.WAITING)
    total = models.PositiveIntegerField(default=0)
    pending = models.PositiveIntegerField(default=0)
    running = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    advanced_at = models.DateTimeField(null=True, blank=True, help_text="when its success let the next group start")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("rollout_id", "index")
        constraints = [models.UniqueConstraint(fields=("rollout", "index"), name="one_group_per_index")]

    def __str__(self) -> str:
        return f"group {self.index} of rollout {self.rollout_id}"


class RolloutTarget(models.Model):
    """One card of a rollout: its group, the instances to reinstall, its status and last error."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="targets", db_index=False)
    group = models.ForeignKey(RolloutGroup, on_delete=models.CASCADE, related_name="targets", db_index=False)
    # No database-level foreign key checks on card, security domain and job: planning writes a million
    # targets whose card and SD ids come from the join of the same statement, and group activation
    # sets job ids from the rows it has just inserted. Per-row RI triggers cost 30 s of a 1M-card
    # plan (docs/benchmarks.md); deletions still cascade through the ORM.
    card = models.ForeignKey(
        "cards.Card", on_delete=models.CASCADE, related_name="rollout_targets", db_index=False, db_constraint=False
    )
    security_domain = models.ForeignKey(
        "cards.SecurityDomain", on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    instances = models.JSONField(default=list, help_text="instance AIDs of the package on the card when planned")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="card jobs dispatched for this card")
    retries = models.PositiveSmallIntegerField(default=0, help_text="retries used since the last resume")
    next_retry_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    job = models.ForeignKey(
        "cards.CardJob",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ("rollout_id", "group_id", "id")
        constraints = [models.UniqueConstraint(fields=("rollout", "card"), name="one_target_per_card_per_rollout")]
        indexes = [models.Index(fields=("group", "status"), name="rollouttarget_group_status")]

    def __str__(self) -> str:
        return f"card {self.card_id} in rollout {self.rollout_id}: {self.status}"


class CardNotice(models.Model):
    """A message to a card's holder from an organisation (issue 18: a bank closed the holder's
    account and removes its security domain). Shown on the holder's card page; also e-mailed when
    the holder has an address. Never personal data beyond the holder link, never key material."""

    class Kind(models.TextChoices):
        ACCOUNT_CLOSED = "account_closed", "Account closed by the bank"

    card = models.ForeignKey("cards.Card", on_delete=models.CASCADE, related_name="notices")
    holder = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="card_notices")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message = models.TextField(max_length=500)
    emailed = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.kind} notice for card {self.card_id}"


__all__ = ["CardNotice", "Rollout", "RolloutGroup", "RolloutTarget"]
