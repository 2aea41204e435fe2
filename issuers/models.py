"""Organisations (agency, banks, regulators), memberships and roles, bank AID ranges, SSD templates.

Key custody models live in :mod:`issuers.custody_models` (imported at the bottom so Django sees them).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

hex_validator = RegexValidator(r"^([0-9A-F]{2})*$", "upper-case hex, an even number of digits")


class Organization(models.Model):
    class Kind(models.TextChoices):
        AGENCY = "agency", "Issuing agency"
        BANK = "bank", "Bank"
        REGULATOR = "regulator", "Regulator"

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)
        # Audit visibility matches entries by slug; an empty slug would match every entry that
        # concerns no organisation (tests/issuers/test_tenancy_slugs.py).
        constraints = [models.CheckConstraint(condition=~models.Q(slug=""), name="organization_slug_not_empty")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_agency(self) -> bool:
        return self.kind == self.Kind.AGENCY

    @property
    def is_bank(self) -> bool:
        return self.kind == self.Kind.BANK

    @property
    def is_regulator(self) -> bool:
        return self.kind == self.Kind.REGULATOR


class Membership(models.Model):
    """A user's role in one organisation."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Administrator"
        OPERATOR = "operator", "Operator"
        AUDITOR = "auditor", "Auditor"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("organization__name", "user__username")
        constraints = [models.UniqueConstraint(fields=("user", "organization"), name="one_membership_per_org")]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.organization}"


class Invitation(models.Model):
    """An organisation admin's offer of a membership; it grants nothing until the invited user
    accepts it (:func:`issuers.services.accept_invitation` creates the :class:`Membership`)."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        REVOKED = "revoked", "Revoked"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=16, choices=Membership.Role.choices)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=("user", "organization"), condition=models.Q(state="pending"), name="one_pending_invitation"
            )
        ]

    def __str__(self) -> str:
        return f"invitation of {self.user} to {self.organization} as {self.role}: {self.state}"


class SharedMemberApproval(models.Model):
    """The agency allows a user who already belongs to another bank to also join ``organization``
    (organisations never share a user otherwise). Agency and regulator accounts are never shared."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="shared_member_approvals")
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [models.UniqueConstraint(fields=("user", "organization"), name="one_sharing_approval")]

    def __str__(self) -> str:
        return f"{self.user} may also join {self.organization}"


class AidRange(models.Model):
    """The AIDs a bank may use on cards: every AID starting with RID || PIX prefix.

    RID is the 5-byte registered application provider id (ISO 7816-5); the PIX prefix narrows
    it. No two banks' ranges may overlap (one prefix a prefix of the other) — enforced by
    :func:`issuers.services.add_aid_range` under a lock, since a unique index cannot say it.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="aid_ranges")
    rid = models.CharField(max_length=10, validators=[hex_validator, RegexValidator(r"^[0-9A-F]{10}$")])
    pix_prefix = models.CharField(max_length=22, blank=True, validators=[hex_validator])
    prefix = models.CharField(max_length=32, unique=True, editable=False)

    class Meta:
        ordering = ("prefix",)

    def __str__(self) -> str:
        return f"{self.organization}: {self.prefix}*"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.prefix = self.rid + self.pix_prefix
        super().save(*args, **kwargs)

    def contains(self, aid_hex: str) -> bool:
        return aid_hex.upper().startswith(self.prefix)


class SsdTemplate(models.Model):
    """How a bank's Supplementary Security Domain is created on a card at enrollment."""

    class Management(models.TextChoices):
        DELEGATED = "dm", "Delegated Management (agency token per operation)"
        AUTHORIZED = "am", "Authorized Management (no token)"

    class KeyAlgorithm(models.TextChoices):
        AES = "aes", "AES"
        DES3 = "3des", "3DES"

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="ssd_template")
    management = models.CharField(max_length=2, choices=Management.choices, default=Management.DELEGATED)
    scp = models.PositiveSmallIntegerField(
        default=0x03,
        help_text="Secure Channel Protocol: 2, 3, or 0x11 (SCP11: the SSD's keys are put by the bank's key service)",
    )
    scp_i = models.PositiveSmallIntegerField(default=0x70, help_text="SCP implementation option i")
    key_algorithm = models.CharField(max_length=4, choices=KeyAlgorithm.choices, default=KeyAlgorithm.AES)
    key_length = models.PositiveSmallIntegerField(default=16, help_text="bytes: 16, 24 or 32 (AES); 16 (3DES)")
    ssd_aid_suffix = models.CharField(
        max_length=16, default="5344", validators=[hex_validator], help_text="appended to the bank's AID prefix"
    )
    default_applets = models.JSONField(
        default=list, blank=True, help_text="applets installed at enrollment: list of package/instance AIDs"
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"SSD template of {self.organization}"

    def clean(self) -> None:
        if self.scp not in (0x02, 0x03, 0x11):
            raise ValidationError({"scp": "SCP must be 02, 03 or 11"})
        if self.scp == 0x02 and (self.key_algorithm != self.KeyAlgorithm.DES3 or self.key_length != 16):
            raise ValidationError({"key_algorithm": "SCP02 uses 16-byte 3DES keys"})
        if self.scp in (0x03, 0x11) and (
            self.key_algorithm != self.KeyAlgorithm.AES or self.key_length not in (16, 24, 32)
        ):
            raise ValidationError({"key_algorithm": "SCP03 uses AES-128/192/256 keys"})


class BankKeyService(models.Model):
    """A bank's own key service (docs/keyservice.md): where the platform reaches it and the TLS
    certificate it pinned when the agency admitted it. The bank's secrets stay in the service."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="key_service")
    endpoint = models.URLField(max_length=300, help_text="https://host:port of the bank's key service")
    service_certificate = models.TextField(help_text="the service's TLS certificate (PEM), pinned")
    certificate_sha256 = models.CharField(max_length=64)
    registered_at = models.DateTimeField(auto_now_add=True)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    is_active = models.BooleanField(default=True)
    # The last health check (issuers.services.check_key_service): when, whether it answered, why not.
    checked_at = models.DateTimeField(null=True, blank=True)
    reachable = models.BooleanField(null=True)
    last_error = models.CharField(max_length=300, blank=True)
    journal_size = models.PositiveIntegerField(null=True, blank=True)
    # The bank's SCP11 OCE certificate, issued under the agency's OCE CA (public; never a key).
    oce_certificate = models.TextField(blank=True)
    oce_not_after = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"key service of {self.organization} at {self.endpoint}"


class ReleasePolicy(models.Model):
    """How the agency approves a bank's releases (docs/releases.md): automatically at upload
    (the default, also for a bank without a row), or after review by an agency operator."""

    class Approval(models.TextChoices):
        AUTO = "auto", "Approved automatically at upload"
        REVIEW = "review", "Reviewed by an agency operator"

    bank = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="release_policy")
    approval = models.CharField(max_length=8, choices=Approval.choices, default=Approval.AUTO)
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    set_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"release approval of {self.bank}: {self.approval}"


class CodeSigningSettings(models.Model):
    """The platform-wide code-signing settings of the agency (one row, pk 1): whether every
    release also carries the agency's Mandated DAP (GPC 2.3.1 §9.2.1)."""

    SINGLETON_PK = 1

    mandated_dap = models.BooleanField(default=False)
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    set_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "code-signing settings"
        verbose_name_plural = "code-signing settings"
        constraints = [models.CheckConstraint(condition=models.Q(pk=1), name="code_signing_settings_singleton")]

    def __str__(self) -> str:
        return f"code signing: mandated DAP {'on' if self.mandated_dap else 'off'}"


class BankDapKey(models.Model):
    """A bank's DAP verification public key (an uncompressed P-256 point, ``gp.dap``): what its SSD
    holds at KVN 73 and what the platform checks the bank's release signatures with. Public."""

    bank = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="dap_key")
    point = models.CharField(max_length=130, validators=[hex_validator], help_text="04 || X || Y, upper-case hex")
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the point, hex")
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    set_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "bank DAP key"

    def __str__(self) -> str:
        return f"DAP key of {self.bank} ({self.fingerprint[:16]})"


from issuers.custody_models import *  # noqa: E402, F403
