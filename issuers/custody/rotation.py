"""KEK lifecycle, second part: rotation re-wraps every key set of an organisation under a new KEK in
one durable transaction and destroys the old KEK; readers keep working throughout.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import record_event
from issuers import custody as custody_package
from issuers.custody.kek import KEK_ALGORITHM, _discard_hsm_kek, _next_kek_version
from issuers.custody.keysets import _unwrap_with, _wrap
from issuers.custody.sealing import forget_kek_version
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.keyvault import BACKEND_PKCS11, KekBackend, KekRef, KekUnavailableError, get_backend
from issuers.models import Organization


def _rewrap_keyset(keyset: KeySet, old: KeyEncryptionKey, new: KeyEncryptionKey, now: Any) -> None:
    """Unwrap with the old KEK, wrap with the new; one row. (Tests inject failures here.)"""
    plaintext = _unwrap_with(keyset, old)
    _wrap(keyset, new, plaintext)
    keyset.rewrapped_at = now
    keyset.save(update_fields=["wrapped", "kek", "rewrapped_at"])


def _destroy_kek(kek: KeyEncryptionKey, now: Any) -> None:
    ref = kek.ref
    if kek.backend == BACKEND_PKCS11:
        # Delete the HSM object only once the re-wrapped rows are durable.
        def delete() -> None:
            get_backend(BACKEND_PKCS11).destroy(ref)

        transaction.on_commit(delete, robust=True)
    else:
        get_backend(kek.backend).destroy(ref)
    kek.wrapped_material = b""
    kek.state = KeyEncryptionKey.State.DESTROYED
    kek.destroyed_at = now
    kek.save(update_fields=["wrapped_material", "state", "destroyed_at"])


def _rotate_in_transaction(
    org: Organization, backend: KekBackend, actor: Any, created: list[KekRef]
) -> KeyEncryptionKey:
    Organization.objects.select_for_update().filter(pk=org.pk).first()
    older = list(
        KeyEncryptionKey.objects.select_for_update()
        .filter(organization=org)
        .exclude(state=KeyEncryptionKey.State.DESTROYED)
        .order_by("version")
    )
    by_id = {k.pk: k for k in older}
    keysets = list(KeySet.objects.select_for_update().filter(organization=org).order_by("pk"))
    version = _next_kek_version(org)
    for kek in older:
        if kek.state == KeyEncryptionKey.State.ACTIVE:
            kek.state = KeyEncryptionKey.State.RETIRED
            kek.save(update_fields=["state"])
    ref = backend.create_kek(org.pk, version)
    created.append(ref)
    new = KeyEncryptionKey.objects.create(
        organization=org,
        version=version,
        backend=backend.name,
        wrapped_material=ref.material,
        hsm_label=ref.label,
        state=KeyEncryptionKey.State.ACTIVE,
    )
    now = timezone.now()
    for keyset in keysets:
        old = by_id.get(keyset.kek_id)
        if old is None:
            raise KekUnavailableError(f"{keyset!r} is wrapped under a destroyed KEK")
        # Looked up on the package: tests inject failures by patching issuers.custody._rewrap_keyset.
        custody_package._rewrap_keyset(keyset, old, new, now)
    for kek in older:
        _destroy_kek(kek, now)
        forget_kek_version(org.pk, kek.version)  # this process at once; the others within a second
    record_event(
        action="custody.kek_rotated",
        subject_type="kek",
        subject_id=f"{org.slug}/v{version}",
        actor=actor,
        organization=org,
        details={
            "old_versions": [k.version for k in older],
            "new_version": version,
            "key_version": version,
            "algorithm": KEK_ALGORITHM,
            "backend": backend.name,
            "key_sets_rewrapped": len(keysets),
        },
    )
    return new


def rotate_kek(org: Organization, actor: Any = None, *, backend: str | None = None) -> KeyEncryptionKey:
    """Replace the organisation's KEK: create version v+1, re-wrap every key set, destroy the old KEK.

    All in one (durable, top-level) transaction with the rows locked: on any failure nothing
    changes (a KEK already created in the HSM is deleted again) and every key still unwraps under
    the old KEK. Readers never block: until the commit they see rows under the old KEK, after it
    rows under the new one (see :func:`_unwrap`). An HSM KEK is deleted from the token only after
    the commit. ``backend`` (default ``ECARD_KEY_BACKEND``) is where the new KEK is created, so a
    rotation also moves an organisation from the software backend into the HSM.
    """
    kek_backend = get_backend(backend)
    created: list[KekRef] = []
    try:
        with transaction.atomic(durable=True):
            return _rotate_in_transaction(org, kek_backend, actor, created)
    except BaseException as exc:
        for ref in created:
            _discard_hsm_kek(ref)
        if isinstance(exc, Exception):
            with transaction.atomic():
                record_event(
                    action="custody.kek_rotated",
                    subject_type="kek",
                    subject_id=org.slug,
                    actor=actor,
                    organization=org,
                    outcome="failure",
                    reason=f"rotation rolled back: {type(exc).__name__}",
                )
        raise
