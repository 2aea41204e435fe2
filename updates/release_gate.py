"""Whether a release may go to cards: approved by the agency, and signed as the cards will check.

Used wherever work on cards is planned from a release (rollouts, the token policy's job check)
and by the OTA engine's DAP blocks (:func:`updates.selectors.release_dap_blocks`). A separate
module so that rollouts and releases both use it (``updates.releases`` imports the rollouts).

A card verifies, before it accepts a load (GPC 2.3.1 §9.2.1, §11.6.2.3):

* the bank's DAP, in the bank's SSD, when that SSD holds a DAP verification key: the platform
  requires a valid bank signature whenever the bank has set its DAP key (``BankDapKey``);
* the agency's Mandated DAP, in the ISD, when the agency turned Mandated DAP on.
"""

from __future__ import annotations

import enum

from ecard.errors import ServiceError
from gp import dap
from issuers import code_signing
from updates.models import Release


class Signature(enum.StrEnum):
    """The state of one DAP signature of a release."""

    NOT_REQUIRED = "not required"
    MISSING = "missing"
    VALID = "valid"
    INVALID = "invalid"


def _hash_of(release: Release) -> bytes:
    return bytes.fromhex(release.lfdb_sha256)


def _signature_bytes(text: str) -> bytes | None:
    try:
        return bytes.fromhex(text) if text else None
    except ValueError:
        return None


def bank_signature(release: Release) -> Signature:
    """The bank's DAP over the release, checked against the bank's current DAP key."""
    point = code_signing.bank_dap_point(release.bank)
    raw = _signature_bytes(release.dap_signature)
    if point is None:
        return Signature.NOT_REQUIRED if not release.dap_signature else Signature.INVALID
    if raw is None:
        return Signature.MISSING if not release.dap_signature else Signature.INVALID
    return Signature.VALID if dap.verify(point, _hash_of(release), raw) else Signature.INVALID


def agency_signature(release: Release) -> Signature:
    """The agency's Mandated DAP over the release (required while Mandated DAP is on)."""
    raw = _signature_bytes(release.agency_dap_signature)
    if raw is None and not release.agency_dap_signature:
        return Signature.MISSING if code_signing.mandated_dap_enabled() else Signature.NOT_REQUIRED
    if raw is not None and code_signing.verify_mandated_dap(_hash_of(release), raw):
        return Signature.VALID
    return Signature.INVALID


def deployment_refusal(release: Release) -> str | None:
    """Why the release may not go to cards now, or None if it may."""
    name = f"release {release.package_aid} v{release.package_version}"
    if release.state != Release.State.APPROVED:
        return f"{name} is {release.get_state_display().lower()}; only an approved release goes to cards"
    bank = bank_signature(release)
    if bank == Signature.MISSING:
        return f"{name} has no DAP signature of {release.bank.name}, whose security domains verify one"
    if bank == Signature.INVALID:
        return f"{name}'s DAP signature does not verify with {release.bank.name}'s current DAP key; sign it again"
    agency = agency_signature(release)
    if agency == Signature.MISSING:
        return f"{name} has no Mandated DAP signature of the agency yet"
    if agency == Signature.INVALID and code_signing.mandated_dap_enabled():
        return f"{name}'s Mandated DAP signature does not verify with the agency's key"
    return None


def obtain_bank_signature(release: Release) -> Signature:
    """The bank's signature state, after asking the bank's key service for a missing one: the
    service signs only a release the bank approved there (docs/keyservice.md), so a bank with a
    service never pastes signatures by hand. Nothing changes when the service says no or is down."""
    state = bank_signature(release)
    if state != Signature.MISSING:
        return state
    from issuers.bank_service_client import BankServiceError
    from issuers.key_services import client_of, registered_service
    from updates.releases import add_dap_signature

    service = registered_service(release.bank)
    if service is None:
        return state
    try:
        signature = client_of(service).dap_signature(release.lfdb_sha256)
        add_dap_signature(release=release, signature=signature, actor=None)
    except (BankServiceError, ServiceError):
        return state
    release.refresh_from_db(fields=["dap_signature"])
    return bank_signature(release)


def require_deployable(release: Release) -> None:
    """Raise a conflict (409) with the reason unless the release may go to cards."""
    obtain_bank_signature(release)
    refusal = deployment_refusal(release)
    if refusal is not None:
        raise ServiceError(refusal, field="release", code="state")


def dap_blocks(release: Release) -> list[tuple[str, bytes]]:
    """The valid DAP signatures of the release, bank's first: ``[("bank", r||s), ("agency", r||s)]``
    as present. The OTA engine names the bank's SSD and the ISD in the DAP blocks."""
    blocks: list[tuple[str, bytes]] = []
    if bank_signature(release) == Signature.VALID:
        blocks.append(("bank", bytes.fromhex(release.dap_signature)))
    if agency_signature(release) == Signature.VALID:
        blocks.append(("agency", bytes.fromhex(release.agency_dap_signature)))
    return blocks
