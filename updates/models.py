"""Models of the updates app: releases (load files), agent credentials, relay card sessions."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models

from cards.signals import auth_failures_cleared
from issuers.models import Organization, ReleasePolicy, hex_validator

if TYPE_CHECKING:
    from cards.models import SecurityDomain


class WorkerHeartbeat(models.Model):
    """A row written by a Celery worker: proves tasks run and commit where the web process reads."""

    token = models.CharField(max_length=64, unique=True)
    hostname = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"heartbeat {self.token} from {self.hostname}"


class Release(models.Model):
    """An immutable applet release: one CAP file of a bank, parsed and hashed at upload.

    The agency approves it at upload or after review (``issuers.models.ReleasePolicy``); the bank
    signs its Load File Data Block hash with its DAP key, and under Mandated DAP the agency signs it
    too (docs/releases.md). Signatures are public: ``r || s`` in hex, blank until given.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Awaiting agency review"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        REVOKED = "revoked", "Revoked"

    Approval = ReleasePolicy.Approval

    bank = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="releases")
    package_aid = models.CharField(max_length=32, validators=[hex_validator])
    package_version = models.CharField(max_length=16, help_text="major.minor")
    applet_aids = models.JSONField(default=list)
    imports = models.JSONField(default=list, help_text="[{aid, version}]")
    cap_file = models.BinaryField(help_text="the CAP file as uploaded")
    filename = models.CharField(max_length=255)
    lfdb_size = models.PositiveIntegerField(help_text="bytes of the Load File Data Block sent to the card")
    lfdb_sha256 = models.CharField(max_length=64)
    lfdb_sha1 = models.CharField(max_length=40)
    cap_sha256 = models.CharField(max_length=64, unique=True)
    changelog = models.TextField(blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.APPROVED)
    approval = models.CharField(
        max_length=8, choices=Approval.choices, default=Approval.AUTO, help_text="the policy it was uploaded under"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    rejected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rejected_at = models.DateTimeField(null=True, blank=True)
    rejection_reason = models.TextField(blank=True)
    dap_signature = models.CharField(
        max_length=128, blank=True, help_text="the bank's DAP over the LFDB hash: r || s, hex"
    )
    agency_dap_signature = models.CharField(
        max_length=128, blank=True, help_text="the agency's Mandated DAP over the LFDB hash: r || s, hex"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("bank__name", "package_aid", "-created_at")
        constraints = [
            models.UniqueConstraint(
                fields=("bank", "package_aid", "package_version"), name="one_release_per_package_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.package_aid} v{self.package_version} ({self.bank})"


# The organisations that run terminals: the agency (kiosks) and banks (ATMs, branch terminals).
TERMINAL_ORG_KINDS = (Organization.Kind.AGENCY, Organization.Kind.BANK)


class AgentCredential(models.Model):
    """A credential to relay card sessions; stored as a hash, revocable.

    Two kinds (exactly one of ``user`` and ``organization`` is set):

    * a **device** credential belongs to a card holder (``user``) and presents that holder's card;
    * a **terminal** credential belongs to an organisation (``organization``: a bank's ATM fleet,
      an agency kiosk), was issued by one of its admins (``issued_by``), and may present any card,
      running only the work the card's holder consented to (:mod:`updates.presentation`).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="agent_credentials",
        help_text="the card holder of a device credential (empty for a terminal)",
    )
    organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="terminal_credentials",
        help_text="the organisation of a terminal credential (empty for a device)",
    )
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="the admin who issued a terminal credential",
    )
    name = models.CharField(max_length=100, help_text="the device, e.g. 'my phone', or the terminal, e.g. 'ATM 12'")
    key_id = models.CharField(max_length=16, unique=True, help_text="public part of the token")
    secret_hash = models.CharField(max_length=64, help_text="SHA-256 of the secret part")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, organization__isnull=True)
                    | models.Q(user__isnull=True, organization__isnull=False)
                ),
                name="agent_credential_device_xor_terminal",
            )
        ]

    def __str__(self) -> str:
        if self.organization_id is not None:
            return f"terminal {self.key_id} ({self.name}) of {self.organization}"
        return f"agent {self.key_id} ({self.name}) of {self.user}"

    @property
    def is_terminal(self) -> bool:
        return self.organization_id is not None

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class CardSession(models.Model):
    """One presentation of a card through an agent: identification, then pending jobs in order.

    The channel state (session keys, MAC chaining value, counters) is sealed under the KEK of the
    organisation whose security domain the channel is with, so any server process can take the
    next exchange and nothing secret is stored in clear.
    """

    class State(models.TextChoices):
        OPEN = "open", "Open"
        DONE = "done", "Done"
        REJECTED = "rejected", "Rejected (protocol or integrity failure)"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    class Mode(models.TextChoices):
        BATCH = "batch", "Batched scripts"
        APDU = "apdu", "One APDU per round trip (benchmark only)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    credential = models.ForeignKey(AgentCredential, on_delete=models.PROTECT, related_name="sessions")
    card = models.ForeignKey("cards.Card", null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.BATCH)
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN, db_index=True)
    exchange = models.PositiveIntegerField(default=0, help_text="number of the batch the agent must answer next")
    engine_state = models.JSONField(default=dict, help_text="position in the plan; never key material")
    sealed_channel = models.BinaryField(null=True, blank=True)
    sealed_by = models.ForeignKey(Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    round_trips = models.PositiveIntegerField(default=0)
    apdus = models.PositiveIntegerField(default=0)
    closed_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("state", "expires_at"), name="cardsession_state_expiry")]

    def __str__(self) -> str:
        return f"session {self.id} ({self.state})"


from updates.rollout_models import *  # noqa: E402,F403


class AuthRefusal(models.Model):
    """An EXTERNAL AUTHENTICATE refused through one reader after the card cryptogram verified.

    The platform's host cryptogram was right, so the refusal is the relay's doing or a card
    fault. A reader adds at most one to the security domain's ``auth_failures`` and is held for
    that SD until the card proves the key set again (an R-MAC'd answer) or an operator clears it
    (docs/threat-model.md, "A relay").
    """

    security_domain = models.ForeignKey("cards.SecurityDomain", on_delete=models.CASCADE, related_name="+")
    credential = models.ForeignKey(AgentCredential, on_delete=models.CASCADE, related_name="auth_refusals")
    session = models.ForeignKey(CardSession, null=True, on_delete=models.SET_NULL, related_name="+")
    status_word = models.CharField(max_length=4)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("security_domain", "credential"), name="one_refusal_per_reader_and_sd")
        ]

    def __str__(self) -> str:
        return f"refusal {self.status_word} for SD {self.security_domain_id} through reader {self.credential_id}"


def _release_held_readers(sender: object, security_domain: SecurityDomain, **kwargs: object) -> None:
    AuthRefusal.objects.filter(security_domain=security_domain).delete()


auth_failures_cleared.connect(_release_held_readers, dispatch_uid="updates.release_held_readers")
