"""The audit log's checkpoint signing key, held in key custody like every other key.

:class:`CustodyCheckpointSigner` is the :class:`audit.signing.CheckpointSigner` the log signs
through (registered in :meth:`issuers.apps.IssuersConfig.ready`). The Ed25519 key belongs to the log
operator (``ECARD_LOG_OPERATOR``, else the first active agency) and is stored only wrapped under
its KEK (purpose ``checkpoint_signing``); generating it appends custody entries to the log.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import transaction

from ecard.errors import ServiceError
from issuers import custody
from issuers.custody_models import KeySet
from issuers.models import Organization

CHECKPOINT_KEY_KVN = 1


class LogKeyError(ServiceError):
    """The log's key set in custody is not an Ed25519 key."""


def log_operator() -> Organization | None:
    """The organisation that runs the log and owns its key: ``ECARD_LOG_OPERATOR`` or the first agency."""
    orgs = Organization.objects.filter(kind=Organization.Kind.AGENCY, is_active=True)
    slug = getattr(settings, "ECARD_LOG_OPERATOR", "")
    return orgs.filter(slug=slug).first() if slug else orgs.order_by("pk").first()


def checkpoint_keyset(org: Organization) -> KeySet | None:
    """The active checkpoint signing key set of ``org`` (metadata and wrapped blob only)."""
    return (
        KeySet.objects.filter(
            organization=org,
            purpose=KeySet.Purpose.CHECKPOINT_SIGNING,
            state=KeySet.State.ACTIVE,
            kvn=CHECKPOINT_KEY_KVN,
            card_cin="",
            sd_aid="",
        )
        .order_by("-pk")
        .first()
    )


def signing_keyset(*, create: bool = True) -> KeySet | None:
    """The checkpoint signing key set in custody; generated (once, under a lock) on first use."""
    org = log_operator()
    if org is None:
        if not create:
            return None
        raise ServiceError("there is no agency to operate the audit log yet", code="state")
    keyset = checkpoint_keyset(org)
    if keyset is not None or not create:
        return keyset
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org.pk).first()  # one creator at a time
        keyset = checkpoint_keyset(org)
        if keyset is None:
            keyset = custody.generate_private_key(
                org, purpose=KeySet.Purpose.CHECKPOINT_SIGNING, algorithm="ed25519", kvn=CHECKPOINT_KEY_KVN
            )
    return keyset


class CustodyCheckpointSigner:
    """The log's key in custody, as :class:`audit.signing.CheckpointSigner`."""

    def ensure_key(self) -> None:
        signing_keyset(create=True)

    def public_key(self) -> Ed25519PublicKey | None:
        keyset = signing_keyset(create=False)
        if keyset is None:
            return None
        public_key = serialization.load_pem_public_key(keyset.public_key.encode("ascii"))
        if not isinstance(public_key, Ed25519PublicKey):
            raise LogKeyError("the checkpoint signing key set does not hold an Ed25519 public key", code="state")
        return public_key

    def sign(self, message: bytes) -> bytes:
        keyset = signing_keyset(create=False)
        if keyset is None:
            raise LogKeyError("the log has no signing key yet", code="state")
        private_key = custody.load_private_key(keyset)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise LogKeyError("the checkpoint signing key is not an Ed25519 key", code="state")
        return private_key.sign(message)
