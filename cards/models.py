"""Cards, security domains on them, applet instances, enrollments, and pending card work.

The server's records mirror the card registry (GP Card Spec 2.3.1 §5–6); the card is the
authority, and jobs reconcile the two with GET STATUS when the card is presented.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from gp import aids
from issuers.models import Organization, hex_validator

ISD_AID = aids.ISD_AID.hex().upper()
# Card.key_scheme of a card whose ISD keys are a per-card key set in custody (KeySet with the
# card's CIN, the ISD's AID, purpose scp_static): a real card imported from a manufacturer file,
# or any card once a renewal rotated its ISD keys (updates.ota.isd_choice). Other schemes
# diversify from the agency master.
STORED_ISD_KEYS = "stored"


class Card(models.Model):
    class Lifecycle(models.TextChoices):
        # GP Card Spec 2.3.1 §5.1.1: card life cycle states.
        OP_READY = "OP_READY", "OP_READY"
        INITIALIZED = "INITIALIZED", "INITIALIZED"
        SECURED = "SECURED", "SECURED"
        CARD_LOCKED = "CARD_LOCKED", "CARD_LOCKED"
        TERMINATED = "TERMINATED", "TERMINATED"

    class Standing(models.TextChoices):
        """What the platform allows for the card, decided by people (the life cycle above is what
        the card R-MAC'd): a blocked or terminated card is refused at once, everywhere, and gets
        its ISD SET STATUS to CARD_LOCKED / TERMINATED the next time it is presented."""

        ACTIVE = "active", "In use"
        BLOCKED = "blocked", "Blocked (reported lost or stolen)"
        TERMINATED = "terminated", "Terminated (replaced or withdrawn)"

    cin = models.CharField("card image number", max_length=32, unique=True, validators=[hex_validator])
    serial = models.CharField(max_length=32, unique=True)
    iin = models.CharField("issuer identification number", max_length=32, blank=True, validators=[hex_validator])
    isd_aid = models.CharField(max_length=32, default=ISD_AID, validators=[hex_validator])
    kdd = models.CharField(
        "key diversification data", max_length=20, validators=[hex_validator], help_text="10 bytes, hex"
    )
    key_scheme = models.CharField(max_length=8, default="kdf3", help_text="ISD key diversification: kdf3, emv, visa2")
    scp = models.PositiveSmallIntegerField(default=0x03)
    scp_i = models.PositiveSmallIntegerField(default=0x70)
    isd_kvn = models.PositiveSmallIntegerField(default=0x30)
    cplc = models.JSONField(default=dict, blank=True, help_text="parsed CPLC fields")
    lifecycle = models.CharField(max_length=16, choices=Lifecycle.choices, default=Lifecycle.SECURED)
    holder = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="cards"
    )
    issued_by = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="issued_cards")
    receipt_counter = models.PositiveIntegerField(
        default=0, help_text="last Delegated Management confirmation counter seen (receipts must advance it)"
    )
    emulated = models.BooleanField(default=False, help_text="an emulated card (cardsim) with a state file")
    mandated_dap = models.BooleanField(
        default=False,
        help_text="the card's ISD was issued with Mandated DAP Verification and the agency's DAP key: "
        "every load into it must carry the agency's signature (GP 2.3.1 §9.2.1)",
    )
    elf_upgrade = models.BooleanField(
        default=False,
        help_text="the card supports Executable Load File Upgrade (GP Amendment H): a package is upgraded "
        "with its instances' data kept, instead of deleted and reinstalled",
    )
    state_file = models.CharField(max_length=500, blank=True)
    standing = models.CharField(max_length=12, choices=Standing.choices, default=Standing.ACTIVE, db_index=True)
    standing_changed_at = models.DateTimeField(null=True, blank=True)
    standing_reason = models.CharField(max_length=500, blank=True, help_text="why it was blocked, unblocked or ended")
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces", help_text="its successor"
    )
    valid_from = models.DateField(null=True, blank=True)
    valid_until = models.DateField(
        null=True, blank=True, db_index=True, help_text="end of validity (the card's 5F24 data object after renewal)"
    )
    manufacturer_batch = models.ForeignKey(
        "ManufacturerBatch",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="cards",
        help_text="the manufacturer file a real card was imported from (empty: emulated or issued here)",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # A citizen holds one card at a time: a terminated card no longer counts (a blocked one does;
    # it can be unblocked). Enforced here and in cards.services (issue_card, assign_holder).
    LIVE = ~Q(lifecycle=Lifecycle.TERMINATED) & ~Q(standing=Standing.TERMINATED)

    class Meta:
        ordering = ("cin",)
        constraints = [
            models.UniqueConstraint(
                fields=("holder",),
                condition=Q(holder__isnull=False) & ~Q(lifecycle="TERMINATED") & ~Q(standing="terminated"),
                name="one_live_card_per_holder",
            )
        ]

    def __str__(self) -> str:
        return f"card {self.cin}"

    @property
    def is_live(self) -> bool:
        """What :attr:`LIVE` selects, for a card already read."""
        return self.lifecycle != Card.Lifecycle.TERMINATED and self.standing != Card.Standing.TERMINATED


class SecurityDomain(models.Model):
    """The ISD or a bank's SSD on one card."""

    class Lifecycle(models.TextChoices):
        # GP Card Spec 2.3.1 §5.3.2: security domain life cycle states.
        INSTALLED = "INSTALLED", "INSTALLED"
        SELECTABLE = "SELECTABLE", "SELECTABLE"
        PERSONALIZED = "PERSONALIZED", "PERSONALIZED"
        LOCKED = "LOCKED", "LOCKED"

    class State(models.TextChoices):
        """Where the platform is with this SD (the card lifecycle is separate)."""

        PENDING = "pending", "Pending installation"
        ACTIVE = "active", "Active"
        REMOVING = "removing", "Removal pending"
        REMOVED = "removed", "Removed"

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="security_domains")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="security_domains")
    aid = models.CharField(max_length=32, validators=[hex_validator])
    is_isd = models.BooleanField(default=False)
    privileges = models.CharField(max_length=6, default="800000", validators=[hex_validator])
    management = models.CharField(max_length=2, default="dm", help_text="dm (Delegated) or am (Authorized)")
    scp = models.PositiveSmallIntegerField(default=0x03)
    scp_i = models.PositiveSmallIntegerField(default=0x70)
    key_kvn = models.PositiveSmallIntegerField(null=True, blank=True, help_text="KVN of the current key set")
    auth_failures = models.PositiveSmallIntegerField(
        default=0, help_text="consecutive failed authentications seen by the platform (never retried blindly)"
    )
    lifecycle = models.CharField(max_length=16, choices=Lifecycle.choices, default=Lifecycle.INSTALLED)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("card__cin", "-is_isd", "aid")
        constraints = [models.UniqueConstraint(fields=("card", "aid"), name="one_sd_per_aid_per_card")]

    def __str__(self) -> str:
        return f"{'ISD' if self.is_isd else 'SSD'} {self.aid} on {self.card.cin}"


class AppletInstance(models.Model):
    class Lifecycle(models.TextChoices):
        # GP Card Spec 2.3.1 §5.3.1: application life cycle states.
        INSTALLED = "INSTALLED", "INSTALLED"
        SELECTABLE = "SELECTABLE", "SELECTABLE"
        LOCKED = "LOCKED", "LOCKED"

    security_domain = models.ForeignKey(SecurityDomain, on_delete=models.CASCADE, related_name="applets")
    package_aid = models.CharField(max_length=32, validators=[hex_validator])
    package_version = models.CharField(max_length=16, help_text="major.minor")
    module_aid = models.CharField(max_length=32, validators=[hex_validator])
    instance_aid = models.CharField(max_length=32, validators=[hex_validator])
    lifecycle = models.CharField(max_length=16, choices=Lifecycle.choices, default=Lifecycle.SELECTABLE)
    installed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("security_domain__card__cin", "instance_aid")
        constraints = [
            models.UniqueConstraint(fields=("security_domain", "instance_aid"), name="one_instance_per_aid_per_sd")
        ]

    def __str__(self) -> str:
        return f"applet {self.instance_aid} ({self.package_aid} v{self.package_version})"


class CardPackage(models.Model):
    """An executable load file (package) in a security domain, as the platform last saw it on the
    card — applet packages and libraries alike (a library has no instances)."""

    security_domain = models.ForeignKey(SecurityDomain, on_delete=models.CASCADE, related_name="packages")
    package_aid = models.CharField(max_length=32, validators=[hex_validator])
    package_version = models.CharField(max_length=16, help_text="major.minor")
    loaded_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("security_domain__card__cin", "package_aid")
        constraints = [
            models.UniqueConstraint(fields=("security_domain", "package_aid"), name="one_package_per_aid_per_sd")
        ]

    def __str__(self) -> str:
        return f"package {self.package_aid} v{self.package_version}"


class Enrollment(models.Model):
    """A citizen's consent to have a bank's security domain on their card, and its progress."""

    class Status(models.TextChoices):
        REQUESTED = "requested", "Requested"
        ACTIVE = "active", "Active"
        REMOVAL_REQUESTED = "removal_requested", "Removal requested"
        REMOVED = "removed", "Removed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATUSES = (Status.REQUESTED, Status.ACTIVE, Status.REMOVAL_REQUESTED)

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="enrollments")
    bank = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="enrollments")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.REQUESTED)
    consent_text = models.TextField(help_text="exactly what the citizen agreed to")
    consented_at = models.DateTimeField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    security_domain = models.ForeignKey(
        SecurityDomain, null=True, blank=True, on_delete=models.SET_NULL, related_name="enrollments"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("card", "bank"),
                condition=Q(status__in=("requested", "active", "removal_requested")),
                name="one_open_enrollment_per_bank_per_card",
            )
        ]

    def __str__(self) -> str:
        return f"{self.bank} on {self.card.cin}: {self.status}"


class CardJob(models.Model):
    """A unit of pending work for one card, run in order the next time the card is presented."""

    class Kind(models.TextChoices):
        ENROLL_BANK = "enroll_bank", "Enroll bank (install SSD, bank keys, default applets)"
        REMOVE_BANK = "remove_bank", "Remove bank (delete SSD and its content)"
        ROTATE_KEYS = "rotate_keys", "Rotate security domain keys"
        LOCK_SD = "lock_sd", "Lock security domain"
        UNLOCK_SD = "unlock_sd", "Unlock security domain"
        UPDATE_APPLET = "update_applet", "Install or update an applet"
        PERSONALIZE = "personalize", "Personalise applet instances"
        CARD_STATUS = "card_status", "Set the card's life cycle (lock, unlock, terminate)"
        RENEW_CARD = "renew_card", "Renew the card's validity and rotate its ISD keys"
        SURVEY_CARD = "survey_card", "Read the card's registry for a repair"
        REPAIR_ISD = "repair_isd", "Delete content the registry does not know (ISD)"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATES = (State.PENDING, State.RUNNING)

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="card_jobs", help_text="whose work this is"
    )
    security_domain = models.ForeignKey(
        SecurityDomain, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    enrollment = models.ForeignKey(Enrollment, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    params = models.JSONField(default=dict, blank=True, help_text="job parameters; never key material")
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("card_id", "created_at", "id")
        indexes = [models.Index(fields=("card", "state"), name="cardjob_card_state")]

    def __str__(self) -> str:
        return f"{self.kind} for {self.card.cin}: {self.state}"


class Personalization(models.Model):
    """Per-card data a bank sends to one of its applet instances (INSTALL [for personalization] and
    STORE DATA in its SSD's channel, GPC 2.3.1 §11.5.2.3.6, §11.11). The platform keeps only the
    envelope sealed to the bank's personalisation key (``gp.sealed``): the bank's key service opens
    it inside its own secure channel, so the data is never readable here, in logs or in audit rows."""

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for the card"
        DELIVERED = "delivered", "Delivered (the card R-MAC'd the last STORE DATA)"
        SUPERSEDED = "superseded", "Replaced by newer data before delivery"
        CANCELLED = "cancelled", "Cancelled"

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="personalizations")
    security_domain = models.ForeignKey(SecurityDomain, on_delete=models.CASCADE, related_name="personalizations")
    instance_aid = models.CharField(max_length=32, validators=[hex_validator])
    envelope = models.BinaryField(help_text="the data sealed to the bank's personalisation key; never clear")
    envelope_sha256 = models.CharField(max_length=64)
    data_length = models.PositiveIntegerField(help_text="bytes of personalisation data inside the envelope")
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING, db_index=True)
    job = models.ForeignKey(CardJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="personalizations")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("card_id", "instance_aid", "-created_at")
        constraints = [
            models.UniqueConstraint(
                fields=("security_domain", "instance_aid"),
                condition=Q(state="pending"),
                name="one_pending_personalization_per_instance",
            )
        ]

    def __str__(self) -> str:
        return f"personalisation of {self.instance_aid} on {self.card_id}: {self.state}"


class ManufacturerBatch(models.Model):
    """One imported card manufacturer's personalisation file (docs/manufacturer-file.md): the
    cards it lists are real cards, their ISD and receipt keys moved from the transport key into
    custody on import. Only the file's digest is kept, never its content."""

    agency = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="manufacturer_batches")
    manufacturer = models.CharField(max_length=100)
    file_name = models.CharField(max_length=200, blank=True)
    file_sha256 = models.CharField(max_length=64, unique=True)
    transport_kcv = models.CharField(max_length=6, help_text="check value of the transport key the file used")
    card_count = models.PositiveIntegerField(default=0)
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.manufacturer} batch of {self.card_count} cards"


class ValidityPolicy(models.Model):
    """The agency's card validity rule: how long a card (or a renewal) is valid, and how close to
    its expiry a card is offered renewal and its holder warned."""

    agency = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="validity_policy")
    years = models.PositiveSmallIntegerField(default=5)
    renew_within_days = models.PositiveSmallIntegerField(default=90, help_text="days before expiry: 'nearing expiry'")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "validity policies"

    def __str__(self) -> str:
        return f"cards valid {self.years} years"


class CardRepair(models.Model):
    """An agency's repair of one card: the registry the card R-MAC'd (a survey job) diffed against
    the platform's records, the plan shown, then ordinary jobs once every touched bank consented."""

    class State(models.TextChoices):
        SURVEYING = "surveying", "Reading the card's registry"
        PLANNED = "planned", "Plan ready for review"
        AWAITING_CONSENT = "awaiting_consent", "Waiting for the banks' consent"
        RUNNING = "running", "Restoring"
        DONE = "done", "Done: the card matches the registry"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATES = (State.SURVEYING, State.PLANNED, State.AWAITING_CONSENT, State.RUNNING)

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="repairs")
    state = models.CharField(max_length=20, choices=State.choices, default=State.SURVEYING, db_index=True)
    reason = models.CharField(max_length=500, blank=True)
    observed = models.JSONField(default=dict, blank=True, help_text="the registry the card R-MAC'd in the survey")
    plan = models.JSONField(default=list, blank=True, help_text="steps: what is deleted, reinstalled, unlocked")
    survey_job = models.ForeignKey(CardJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    jobs = models.ManyToManyField(CardJob, blank=True, related_name="repairs")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=("card",),
                condition=Q(state__in=("surveying", "planned", "awaiting_consent", "running")),
                name="one_open_repair_per_card",
            )
        ]

    def __str__(self) -> str:
        return f"repair of card {self.card_id}: {self.state}"


class RepairConsent(models.Model):
    """A bank's consent to a repair step that touches its security domain's content."""

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for the bank"
        GIVEN = "given", "Given"
        REFUSED = "refused", "Refused"

    repair = models.ForeignKey(CardRepair, on_delete=models.CASCADE, related_name="consents")
    bank = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="repair_consents")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("repair_id", "bank_id")
        constraints = [models.UniqueConstraint(fields=("repair", "bank"), name="one_consent_per_bank_per_repair")]

    def __str__(self) -> str:
        return f"{self.bank_id} on repair {self.repair_id}: {self.state}"


class BankNotice(models.Model):
    """An event about a card that a bank's API and dashboard show, and its webhook (if the bank
    configured one) delivers, signed (docs/notifications.md). Never key material or personal data
    beyond the card's CIN."""

    class Kind(models.TextChoices):
        CARD_BLOCKED = "card_blocked", "Card blocked (lost or stolen)"
        CARD_UNBLOCKED = "card_unblocked", "Card unblocked"
        CARD_REPLACED = "card_replaced", "Card replaced"
        PERSONALIZATION_REQUESTED = "perso_requested", "Personalisation data requested again"
        REPAIR_CONSENT = "repair_consent", "A repair touches the bank's security domain"

    class Delivery(models.TextChoices):
        NONE = "none", "No webhook"
        PENDING = "pending", "Webhook pending"
        DELIVERED = "delivered", "Webhook delivered"
        FAILED = "failed", "Webhook failed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="card_notices")
    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="bank_notices")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message = models.CharField(max_length=500)
    details = models.JSONField(default=dict, blank=True)
    delivery = models.CharField(max_length=10, choices=Delivery.choices, default=Delivery.NONE)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("organization", "created_at"), name="banknotice_org_created")]

    def __str__(self) -> str:
        return f"{self.kind} for {self.organization_id} about card {self.card_id}"


class Webhook(models.Model):
    """Where a bank wants its card notices POSTed (https in production). Payloads are signed with
    the platform's log signing key, which banks already trust, so no shared secret is stored."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="webhook")
    url = models.URLField(max_length=500)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"webhook of {self.organization_id}"


class NotificationPreferences(models.Model):
    """What a citizen wants e-mailed (their account page); absent means every kind."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_preferences"
    )
    work_waiting = models.BooleanField(default=True, help_text="work waits for my card")
    work_done = models.BooleanField(default=True, help_text="work on my card is done")
    card_status = models.BooleanField(default=True, help_text="my card is blocked, unblocked or replaced")
    expiry = models.BooleanField(default=True, help_text="my card nears its expiry or was renewed")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"notification preferences of {self.user_id}"


class CitizenEmail(models.Model):
    """An e-mail sent to a card holder (subject and kind only, for de-duplication and history)."""

    class Kind(models.TextChoices):
        WORK_WAITING = "work_waiting", "Work waits for the card"
        WORK_DONE = "work_done", "Work done"
        CARD_BLOCKED = "card_blocked", "Card blocked"
        CARD_UNBLOCKED = "card_unblocked", "Card unblocked"
        CARD_REPLACED = "card_replaced", "Card replaced"
        EXPIRY = "expiry", "Card nears expiry"
        RENEWED = "renewed", "Card renewed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="card_emails")
    card = models.ForeignKey(Card, null=True, blank=True, on_delete=models.SET_NULL, related_name="emails")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    dedupe_key = models.CharField(max_length=100, unique=True, help_text="one e-mail per event")
    subject = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.kind} e-mail to {self.user_id}"
