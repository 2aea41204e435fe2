"""KEK lifecycle, first part: an organisation's key-encryption key is created on first use (DESIGN §7).

Rotation, which needs the key-set wrapping, lives in :mod:`issuers.custody.rotation`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from audit.services import record_event
from issuers.custody_models import KeyEncryptionKey
from issuers.keyvault import BACKEND_PKCS11, CustodyError, KekBackend, KekRef, get_backend
from issuers.models import Organization

logger = logging.getLogger(__name__)


# Every backend's KEK is an AES-256 key that wraps with AES-GCM (issuers/keyvault.py); audit
# entries name it so. (No key has a certificate yet: entries carry no certificate serial.)
KEK_ALGORITHM = "aes-256-gcm"


def active_kek(org: Organization) -> KeyEncryptionKey | None:
    """The organisation's active KEK row, if it has one."""
    return KeyEncryptionKey.objects.filter(organization=org, state=KeyEncryptionKey.State.ACTIVE).first()


def _next_kek_version(org: Organization) -> int:
    return (KeyEncryptionKey.objects.filter(organization=org).aggregate(v=Max("version"))["v"] or 0) + 1


def _create_kek_row(org: Organization, version: int, backend: KekBackend) -> tuple[KeyEncryptionKey, KekRef]:
    """Create the KEK in the backend, then its row; the caller owns the transaction and cleanup."""
    ref = backend.create_kek(org.pk, version)
    kek = KeyEncryptionKey.objects.create(
        organization=org,
        version=version,
        backend=backend.name,
        wrapped_material=ref.material,
        hsm_label=ref.label,
        state=KeyEncryptionKey.State.ACTIVE,
    )
    return kek, ref


def _discard_hsm_kek(ref: KekRef | None) -> None:
    """Delete an HSM KEK whose row was rolled back (software KEKs vanish with their row)."""
    if ref is None or ref.backend != BACKEND_PKCS11:
        return
    try:
        get_backend(BACKEND_PKCS11).destroy(ref)
    except CustodyError:
        logger.warning("could not delete the uncommitted HSM KEK %r; custody replaces it on the next attempt", ref)


def ensure_org_kek(org: Organization, *, actor: Any = None) -> KeyEncryptionKey:
    """The organisation's active KEK, created (version 1, or the next free version) if missing."""
    kek = active_kek(org)
    if kek is not None:
        return kek
    ref: KekRef | None = None
    try:
        with transaction.atomic():
            # Serialise concurrent first uses on the organisation row.
            Organization.objects.select_for_update().filter(pk=org.pk).first()
            kek = active_kek(org)
            if kek is not None:
                return kek
            backend = get_backend()
            kek, ref = _create_kek_row(org, _next_kek_version(org), backend)
            record_event(
                action="custody.kek_created",
                subject_type="kek",
                subject_id=f"{org.slug}/v{kek.version}",
                actor=actor,
                organization=org,
                details={
                    "version": kek.version,
                    "key_version": kek.version,
                    "algorithm": KEK_ALGORITHM,
                    "backend": kek.backend,
                },
            )
            return kek
    except IntegrityError:
        _discard_hsm_kek(ref)
        kek = active_kek(org)
        if kek is None:
            raise
        return kek
    except BaseException:
        _discard_hsm_kek(ref)
        raise
