"""Key custody records: per-organisation key-encryption keys and wrapped key sets (DESIGN §7).

No field holds a clear key. ``KeyEncryptionKey.wrapped_material`` is the software backend's KEK
encrypted under the master key (empty for PKCS#11 KEKs, which live in the HSM, and once
destroyed); ``KeySet.wrapped`` is the key material encrypted under the owner's KEK with
associated data binding owner, card, security domain, KVN, purpose and KEK version.
KCVs and public keys are public metadata. ``__str__``/``__repr__`` show metadata only.

Imported at the bottom of :mod:`issuers.models`; the services are in :mod:`issuers.custody`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Q

if TYPE_CHECKING:
    from issuers.keyvault import KekRef

__all__ = ["KeyEncryptionKey", "KeySet"]


class KeyEncryptionKey(models.Model):
    """One version of an organisation's KEK. Exactly one active version per organisation."""

    class Backend(models.TextChoices):
        SOFTWARE = "software", "Software (wrapped under the master key)"
        PKCS11 = "pkcs11", "PKCS#11 HSM"

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired (being replaced)"
        DESTROYED = "destroyed", "Destroyed"

    organization = models.ForeignKey(
        "issuers.Organization", on_delete=models.PROTECT, related_name="key_encryption_keys"
    )
    version = models.PositiveIntegerField()
    backend = models.CharField(max_length=16, choices=Backend.choices)
    wrapped_material = models.BinaryField(
        blank=True, default=b"", editable=False, help_text="software KEK encrypted under the master key"
    )
    hsm_label = models.CharField(max_length=64, blank=True, editable=False, help_text="PKCS#11 object label")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("organization_id", "version")
        verbose_name = "key-encryption key"
        constraints = [
            models.UniqueConstraint(fields=("organization", "version"), name="kek_unique_org_version"),
            models.UniqueConstraint(
                fields=("organization",), condition=Q(state="active"), name="kek_one_active_per_org"
            ),
        ]

    def __str__(self) -> str:
        return f"KEK v{self.version} of org {self.organization_id} ({self.backend}, {self.state})"

    def __repr__(self) -> str:
        return (
            f"<KeyEncryptionKey id={self.pk} org={self.organization_id} version={self.version} "
            f"backend={self.backend} state={self.state}>"
        )

    @property
    def ref(self) -> KekRef:
        from issuers.keyvault import KekRef  # lazy: keyvault reads settings

        return KekRef(
            organization_id=self.organization_id,
            version=self.version,
            backend=self.backend,
            label=self.hsm_label,
        )


class KeySet(models.Model):
    """A wrapped key (or key set) owned by one organisation, with public metadata only in clear."""

    class Purpose(models.TextChoices):
        SCP_STATIC = "scp_static", "Secure channel static keys (ENC/MAC/DEK)"
        DIVERSIFICATION_MASTER = "diversification_master", "Diversification master key"
        TOKEN_SIGNING = "token_signing", "Delegated management token signing key"
        RECEIPT = "receipt", "Receipt key"
        CHECKPOINT_SIGNING = "checkpoint_signing", "Transparency log checkpoint signing key"
        CARD_CA = "card_ca", "Card CA (certifies each card's attestation key)"
        OCE_CA = "oce_ca", "OCE CA (certifies banks' SCP11 off-card keys)"
        MANDATED_DAP = "mandated_dap", "Mandated DAP signing key (the agency's signature over load files)"
        TRANSPORT = "transport", "Manufacturer transport key (decrypts imported cards' keys)"

    class Algorithm(models.TextChoices):
        AES = "aes", "AES"
        DES3 = "3des", "3DES"
        EC_P256 = "ec-p256", "ECDSA P-256"
        RSA = "rsa", "RSA"
        ED25519 = "ed25519", "Ed25519"

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUPERSEDED = "superseded", "Superseded"

    organization = models.ForeignKey("issuers.Organization", on_delete=models.PROTECT, related_name="key_sets")
    card_cin = models.CharField(max_length=64, blank=True, db_index=True, help_text="empty: not bound to a card")
    sd_aid = models.CharField(max_length=32, blank=True, help_text="upper-case hex; empty: not bound to an SD")
    kvn = models.PositiveSmallIntegerField(help_text="key version number, 0..255")
    purpose = models.CharField(max_length=32, choices=Purpose.choices)
    algorithm = models.CharField(max_length=16, choices=Algorithm.choices)
    key_length = models.PositiveSmallIntegerField(help_text="bytes (RSA: modulus bytes)")
    kcv_enc = models.CharField(max_length=6, blank=True)
    kcv_mac = models.CharField(max_length=6, blank=True)
    kcv_dek = models.CharField(max_length=6, blank=True)
    public_key = models.TextField(blank=True, help_text="PEM SubjectPublicKeyInfo (asymmetric keys)")
    wrapped = models.BinaryField(editable=False)
    kek = models.ForeignKey(KeyEncryptionKey, on_delete=models.PROTECT, related_name="key_sets")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True, help_text="when a newer key set replaced this one")
    rewrapped_at = models.DateTimeField(null=True, blank=True, help_text="last re-wrap under a new KEK")

    class Meta:
        ordering = ("organization_id", "card_cin", "sd_aid", "purpose", "kvn", "id")
        verbose_name = "key set"
        constraints = [
            models.UniqueConstraint(
                fields=("organization", "card_cin", "sd_aid", "kvn", "purpose"),
                condition=Q(state="active"),
                name="keyset_one_active_per_slot",
            ),
            models.CheckConstraint(condition=Q(kvn__lte=255), name="keyset_kvn_byte"),
        ]

    def __str__(self) -> str:
        where = f" card {self.card_cin}" if self.card_cin else ""
        where += f" SD {self.sd_aid}" if self.sd_aid else ""
        return f"{self.purpose} KVN 0x{self.kvn:02X} {self.algorithm}-{self.key_length * 8}{where} ({self.state})"

    def __repr__(self) -> str:
        return (
            f"<KeySet id={self.pk} org={self.organization_id} purpose={self.purpose} kvn={self.kvn} "
            f"algorithm={self.algorithm} card_cin={self.card_cin!r} sd_aid={self.sd_aid!r} state={self.state}>"
        )

    @property
    def kcvs(self) -> dict[str, str]:
        return {"enc": self.kcv_enc, "mac": self.kcv_mac, "dek": self.kcv_dek}
