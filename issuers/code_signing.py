"""Code signing of load files (docs/releases.md): the banks' DAP verification keys, the agency's
release approval policy per bank, and the agency's Mandated DAP (GPC 2.3.1 §9.2.1).

* A bank's DAP key is public (an uncompressed P-256 point, :mod:`gp.dap`): the platform keeps it
  to check the signatures the bank gives its releases; the private key stays with the bank (its
  key service signs with ``CKM_ECDSA_SHA256``).
* The agency's Mandated DAP key is a custody key set of the agency (purpose ``mandated_dap``,
  wrapped under the agency's KEK like its CAs); it is unwrapped only to sign, here.
* Every change writes an audit entry in the same transaction, with fingerprints, never key bytes.

The release side (approving, signing a release) is :mod:`updates.releases`; this module knows no
release, only Load File Data Block hashes (issuers sits below updates).
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from audit.services import record_event
from ecard.errors import ServiceError
from gp import dap
from gp.errors import KeyMaterialError
from issuers.custody.keysets import generate_private_key, load_private_key
from issuers.custody_models import KeySet
from issuers.models import BankDapKey, CodeSigningSettings, Membership, Organization, ReleasePolicy
from issuers.roles import principal

MAX_POINT_TEXT = 400  # hex of a 65-byte point with room for spaces; anything longer is refused unread


# --------------------------------------------------------------------------- who may


def _agency_admin(actor: AbstractBaseUser | None) -> bool:
    if actor is None:  # the platform itself (seed commands, tests of the services)
        return True
    who = principal(actor)
    return any(who.has_role(org_id, Membership.Role.ADMIN) for org_id in who.org_ids(Organization.Kind.AGENCY))


def _require_agency_admin(actor: AbstractBaseUser | None, what: str) -> None:
    if not _agency_admin(actor):
        raise ServiceError(f"only an agency administrator {what}", code="forbidden")


def _the_agency() -> Organization:
    agency = Organization.objects.filter(kind=Organization.Kind.AGENCY).order_by("pk").first()
    if agency is None:
        raise ServiceError("the platform has no agency", code="state")
    return agency


def _user(actor: AbstractBaseUser | None) -> Any:
    return actor if actor is not None and getattr(actor, "pk", None) else None


# --------------------------------------------------------------------------- banks' DAP keys


def fingerprint(point: bytes) -> str:
    """SHA-256 of the uncompressed point, hex: how the portal, the API and the log name a DAP key."""
    return hashlib.sha256(point).hexdigest()


def parse_point(value: str | bytes) -> bytes:
    """A DAP public key given as hex text (spaces and colons allowed) or bytes, checked to be a
    P-256 point; a clear :class:`ServiceError` otherwise."""
    if isinstance(value, str):
        if len(value) > MAX_POINT_TEXT:
            raise ServiceError("a DAP public key is 65 bytes (130 hex digits)", field="point")
        text = "".join(ch for ch in value if ch not in " :\t\r\n")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ServiceError("the DAP public key is not hex text", field="point") from None
    else:
        raw = bytes(value)
    try:
        dap.load_public_point(raw)
    except KeyMaterialError as exc:
        raise ServiceError(str(exc), field="point") from None
    return raw


def bank_dap_point(bank: Organization) -> bytes | None:
    """The bank's DAP verification key (uncompressed point), or None if it has set none."""
    key = BankDapKey.objects.filter(bank=bank).first()
    return bytes.fromhex(key.point) if key is not None else None


@transaction.atomic
def set_bank_dap_key(*, bank: Organization, point: str | bytes, actor: AbstractBaseUser | None) -> BankDapKey:
    """A bank admin sets (or replaces) the bank's DAP verification public key. Signatures given
    under an earlier key no longer count: its releases must be signed again before a rollout."""
    if not bank.is_bank:
        raise ServiceError("only a bank has a DAP key", field="bank")
    if actor is not None and not principal(actor).has_role(bank.pk, Membership.Role.ADMIN):
        raise ServiceError(f"only an administrator of {bank.name} sets its DAP key", code="forbidden")
    raw = parse_point(point)
    key = BankDapKey.objects.select_for_update().filter(bank=bank).first()
    previous = key.fingerprint if key is not None else ""
    new_fingerprint = fingerprint(raw)
    if key is not None and key.fingerprint == new_fingerprint:
        return key
    if key is None:
        key = BankDapKey(bank=bank)
    key.point = raw.hex().upper()
    key.fingerprint = new_fingerprint
    key.set_by = _user(actor)
    key.save()
    record_event(
        action="code_signing.bank_dap_key_set",
        subject_type="organization",
        subject_id=bank.pk,
        actor=actor,
        organization=bank,
        details={"fingerprint": new_fingerprint, "previous_fingerprint": previous or None},
    )
    return key


# --------------------------------------------------------------------------- approval policy


def release_approval(bank: Organization) -> str:
    """The approval policy of the bank's releases: ``auto`` (the default) or ``review``."""
    policy = ReleasePolicy.objects.filter(bank=bank).first()
    return policy.approval if policy is not None else ReleasePolicy.Approval.AUTO


@transaction.atomic
def set_release_policy(*, bank: Organization, approval: str, actor: AbstractBaseUser | None) -> ReleasePolicy:
    """The agency sets how a bank's releases are approved. Releases uploaded earlier keep their state."""
    _require_agency_admin(actor, "sets a bank's release approval policy")
    if not bank.is_bank:
        raise ServiceError("only a bank publishes releases", field="bank")
    if approval not in ReleasePolicy.Approval.values:
        raise ServiceError(f"approval is one of {', '.join(ReleasePolicy.Approval.values)}", field="approval")
    policy, _created = ReleasePolicy.objects.select_for_update().get_or_create(bank=bank)
    previous = policy.approval if not _created else None
    if not _created and policy.approval == approval:
        return policy
    policy.approval = approval
    policy.set_by = _user(actor)
    policy.save()
    record_event(
        action="code_signing.release_policy_set",
        subject_type="organization",
        subject_id=bank.pk,
        actor=actor,
        organization=bank,
        details={"approval": approval, "previous": previous},
    )
    return policy


# --------------------------------------------------------------------------- Mandated DAP


def code_signing_settings() -> CodeSigningSettings:
    """The platform's code-signing settings (created with their defaults on first read)."""
    row, _ = CodeSigningSettings.objects.get_or_create(pk=CodeSigningSettings.SINGLETON_PK)
    return row


def mandated_dap_enabled() -> bool:
    row = CodeSigningSettings.objects.filter(pk=CodeSigningSettings.SINGLETON_PK).first()
    return row is not None and row.mandated_dap


def _mandated_keyset(
    agency: Organization, *, actor: AbstractBaseUser | None = None, create: bool = True
) -> KeySet | None:
    keyset = KeySet.objects.filter(
        organization=agency, purpose=KeySet.Purpose.MANDATED_DAP, state=KeySet.State.ACTIVE, card_cin="", sd_aid=""
    ).first()
    if keyset is None and create:
        keyset = generate_private_key(
            agency, purpose=KeySet.Purpose.MANDATED_DAP, algorithm="ec-p256", kvn=dap.DAP_KVN, actor=actor
        )
    return keyset


def _point_of(keyset: KeySet) -> bytes:
    public = serialization.load_pem_public_key(keyset.public_key.encode())
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ServiceError("the agency's Mandated DAP key is not an EC key", code="unavailable")
    return dap.public_point(public)


def mandated_dap_public_point() -> bytes:
    """The agency's Mandated DAP verification key (uncompressed P-256 point): what the ISD of
    every card holds at KVN 73. The key pair is created in custody on first use."""
    keyset = _mandated_keyset(_the_agency())
    if keyset is None:  # pragma: no cover - created above
        raise ServiceError("no Mandated DAP key", code="unavailable")
    return _point_of(keyset)


def mandated_dap_sign(load_file_data_block_hash: bytes, *, actor: AbstractBaseUser | None = None) -> bytes:
    """The agency's DAP ``r || s`` over a Load File Data Block hash. The private key is unwrapped
    for this signature only; callers (:func:`updates.releases.agency_dap_sign`) decide what to sign."""
    keyset = _mandated_keyset(_the_agency(), actor=actor)
    if keyset is None:  # pragma: no cover - created above
        raise ServiceError("no Mandated DAP key", code="unavailable")
    private_key = load_private_key(keyset)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ServiceError("the agency's Mandated DAP key is not an EC key", code="unavailable")
    return dap.sign(private_key, load_file_data_block_hash)


def verify_mandated_dap(load_file_data_block_hash: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the agency's Mandated DAP over that hash (False if it has no key yet)."""
    keyset = _mandated_keyset(_the_agency(), create=False)
    if keyset is None:
        return False
    return dap.verify(_point_of(keyset), load_file_data_block_hash, signature)


@transaction.atomic
def set_mandated_dap(*, enabled: bool, actor: AbstractBaseUser | None) -> CodeSigningSettings:
    """The agency turns Mandated DAP on or off for the platform. Turning it on creates the agency's
    Mandated DAP key in custody if it has none; :func:`updates.releases.set_mandated_dap_policy`
    also signs the releases already approved."""
    _require_agency_admin(actor, "changes the code-signing settings")
    if not isinstance(enabled, bool):
        raise ServiceError("mandated_dap is true or false", field="mandated_dap")
    row, _ = CodeSigningSettings.objects.select_for_update().get_or_create(pk=CodeSigningSettings.SINGLETON_PK)
    if row.mandated_dap == enabled:
        return row
    details: dict[str, Any] = {"mandated_dap": enabled}
    if enabled:
        keyset = _mandated_keyset(_the_agency(), actor=actor)
        if keyset is not None:
            details["fingerprint"] = fingerprint(_point_of(keyset))
    row.mandated_dap = enabled
    row.set_by = _user(actor)
    row.save()
    record_event(
        action="code_signing.mandated_dap_set",
        subject_type="code_signing",
        subject_id=row.pk,
        actor=actor,
        organization=_the_agency(),
        details=details,
    )
    return row
