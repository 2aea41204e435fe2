"""Applet releases: a bank's CAP upload, parsed, validated and stored immutably.

A file is refused — with a precise reason and nothing stored — when it does not parse, when its
package or applet AIDs are outside the bank's AID range, when an import cannot be satisfied by
the card profile or the bank's own earlier releases, when its Load File Data Block cannot be
loaded in at most 256 short LOAD blocks (GP 2.3.1 §11.6.2.3: one-byte block number), or when it
duplicates an existing release.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
import zlib
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.security import Kind as SecurityKind
from audit.security import records_refusals
from audit.services import record_event
from ecard.errors import ServiceError
from gp import commands, dap
from gp.cap import LoadFile
from gp.errors import GPError
from gp.javacard import ROM_PACKAGES
from issuers import code_signing
from issuers.models import BankDapKey, CodeSigningSettings, Organization, ReleasePolicy
from issuers.roles import principal
from issuers.services import aid_in_bank_range
from updates import release_gate
from updates.models import Release
from updates.rollouts import pause_rollouts_of_release

logger = logging.getLogger(__name__)

MAX_CAP_BYTES = 1024 * 1024
# The smallest per-block payload the platform plans for: SCP03 S16 with C-DEC and C-MAC (DESIGN §9).
WORST_CASE_BLOCK = 223


def card_profile() -> dict[str, tuple[int, int]]:
    """Packages every card of the platform has in ROM (Java Card 3.0.5 / GP 2.3 API), AID -> version."""
    return {aid.hex().upper(): version for aid, version, _name in ROM_PACKAGES}


def parse_cap(cap_bytes: bytes, filename: str) -> LoadFile:
    if len(cap_bytes) > MAX_CAP_BYTES:
        raise ServiceError(f"the file is larger than {MAX_CAP_BYTES // 1024} KiB", field="cap_file")
    try:
        load_file = LoadFile.from_bytes(cap_bytes, name=filename)
        load_file.load_file_data_block()
        return load_file
    except GPError as exc:
        raise ServiceError(f"not a valid CAP file: {exc}", field="cap_file") from exc
    except (ValueError, LookupError, ArithmeticError, EOFError, RuntimeError, zlib.error, zipfile.BadZipFile) as exc:
        # gp.cap raises GPError for every defect it knows; anything else from a hostile file is
        # still a refusal of the file, never a server error.
        logger.warning("CAP parser raised %s on an upload", type(exc).__name__)
        raise ServiceError(f"not a valid CAP file: unreadable ({type(exc).__name__})", field="cap_file") from exc


def _version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def check_imports(bank: Organization, load_file: LoadFile) -> None:
    """Each import must be met by a ROM package or an approved release of the bank: same major
    version, minor version at least the imported one (JCVM spec §4.5.2, binary compatibility)."""
    profile = card_profile()
    own = {(r.package_aid, r.package_version) for r in Release.objects.filter(bank=bank, state=Release.State.APPROVED)}
    for imported in load_file.imports:
        aid = imported.aid.hex().upper()
        major, minor = imported.version
        if aid in profile:
            have = profile[aid]
            if have[0] != major or have[1] < minor:
                raise ServiceError(
                    f"imports {aid} version {major}.{minor}, but cards have version {_version(have)}",
                    field="cap_file",
                )
            continue
        versions = [tuple(int(x) for x in version.split(".")) for pkg, version in own if pkg == aid]
        if not any(v[0] == major and v[1] >= minor for v in versions):
            raise ServiceError(
                f"imports {aid} version {major}.{minor}, which is neither on the cards nor a release of {bank.name}",
                field="cap_file",
            )


@records_refusals(SecurityKind.UPLOAD_REJECTED, actor="actor", organization="bank")
@transaction.atomic
def create_release(
    *,
    bank: Organization,
    cap_bytes: bytes,
    filename: str,
    changelog: str = "",
    actor: User | None = None,
) -> Release:
    if not bank.is_bank:
        raise ServiceError("only banks publish applet releases", field="bank")
    load_file = parse_cap(bytes(cap_bytes), filename)
    package_aid = load_file.package_aid.hex().upper()
    for aid in [package_aid, *(a.hex().upper() for a in load_file.applet_aids)]:
        if not aid_in_bank_range(bank, aid):
            raise ServiceError(f"{aid} is outside {bank.name}'s AID range", field="cap_file", code="aid_range")
    check_imports(bank, load_file)
    lfdb = load_file.load_file_data_block()
    try:
        commands.plan_load(lfdb, WORST_CASE_BLOCK)
    except GPError as exc:
        raise ServiceError(f"too large to load on the cards: {exc}", field="cap_file") from exc
    cap_sha256 = hashlib.sha256(cap_bytes).hexdigest()
    version = _version(load_file.package_version)
    if Release.objects.filter(cap_sha256=cap_sha256).exists():
        raise ServiceError("this exact file was already uploaded", field="cap_file", code="duplicate")
    if Release.objects.filter(bank=bank, package_aid=package_aid, package_version=version).exists():
        raise ServiceError(f"{package_aid} version {version} already exists", field="cap_file", code="duplicate")
    review = code_signing.release_approval(bank) == ReleasePolicy.Approval.REVIEW
    try:
        with transaction.atomic():
            release = Release.objects.create(
                bank=bank,
                package_aid=package_aid,
                package_version=version,
                applet_aids=[a.hex().upper() for a in load_file.applet_aids],
                imports=[{"aid": i.aid.hex().upper(), "version": _version(i.version)} for i in load_file.imports],
                cap_file=bytes(cap_bytes),
                filename=filename[:255],
                lfdb_size=len(lfdb),
                lfdb_sha256=hashlib.sha256(lfdb).hexdigest(),
                lfdb_sha1=hashlib.sha1(lfdb).hexdigest(),  # noqa: S324 - GP load file hash option, not security
                cap_sha256=cap_sha256,
                changelog=changelog,
                created_by=actor if actor is not None and getattr(actor, "pk", None) else None,
                state=Release.State.PENDING if review else Release.State.APPROVED,
                approval=Release.Approval.REVIEW if review else Release.Approval.AUTO,
                approved_at=None if review else timezone.now(),
            )
    except IntegrityError as exc:
        raise ServiceError("this release already exists", field="cap_file", code="duplicate") from exc
    record_event(
        action="release.created",
        subject_type="release",
        subject_id=release.pk,
        actor=actor,
        organization=bank,
        details={
            "package_aid": package_aid,
            "version": version,
            "lfdb_sha256": release.lfdb_sha256,
            "state": release.state,
        },
    )
    if not review:
        # Approved under the bank's auto policy: no approver, recorded as the platform's act.
        _record_release(release, "release.approved", None, approval=Release.Approval.AUTO)
        _sign_if_mandated(release, None)
    return release


def release_summary(release: Release) -> dict[str, Any]:
    return {
        "package_aid": release.package_aid,
        "version": release.package_version,
        "applets": release.applet_aids,
        "size": release.lfdb_size,
        "sha256": release.lfdb_sha256,
    }


def _check_release_operator(release: Release, actor: AbstractBaseUser | None) -> None:
    if actor is None:
        return
    who = principal(actor)
    if not (who.can_operate(release.bank_id) or who.agency_operator):
        raise ServiceError(f"only {release.bank.name}'s operators or the agency manage this release", code="forbidden")


@transaction.atomic
def revoke_release(*, release: Release, actor: AbstractBaseUser | None, reason: str = "") -> Release:
    """Withdraw a release: the agency signs no more tokens for it (updates.policy) and its running
    rollouts pause. The release itself stays, unchanged, for the record."""
    release = Release.objects.select_for_update().select_related("bank").get(pk=release.pk)
    _check_release_operator(release, actor)
    if release.state == Release.State.REVOKED:
        raise ServiceError("the release is already revoked", code="state")
    release.state = Release.State.REVOKED
    release.save(update_fields=["state"])
    reason = (reason or "").strip()[:1000]
    paused = pause_rollouts_of_release(
        release, f"release {release.package_aid} v{release.package_version} revoked" + (f": {reason}" if reason else "")
    )
    record_event(
        action="release.revoked",
        subject_type="release",
        subject_id=release.pk,
        actor=actor,
        organization=release.bank,
        reason=reason,
        details={"package_aid": release.package_aid, "version": release.package_version, "rollouts_paused": paused},
    )
    return release


@transaction.atomic
def update_changelog(*, release: Release, actor: AbstractBaseUser | None, changelog: str) -> Release:
    """The changelog is the one editable field of a release (the file and its hashes never change)."""
    release = Release.objects.select_for_update().select_related("bank").get(pk=release.pk)
    _check_release_operator(release, actor)
    changelog = changelog or ""
    if len(changelog) > 20_000:
        raise ServiceError("the changelog is longer than 20,000 characters", field="changelog")
    if changelog == release.changelog:
        return release
    release.changelog = changelog
    release.save(update_fields=["changelog"])
    record_event(
        action="release.changelog_updated",
        subject_type="release",
        subject_id=release.pk,
        actor=actor,
        organization=release.bank,
        details={
            "package_aid": release.package_aid,
            "version": release.package_version,
            "changelog_sha256": hashlib.sha256(changelog.encode()).hexdigest(),
        },
    )
    return release


# --------------------------------------------------------------------------- approval and code signing


def _record_release(
    release: Release, action: str, actor: AbstractBaseUser | None, reason: str = "", **details: Any
) -> None:
    record_event(
        action=action,
        subject_type="release",
        subject_id=release.pk,
        actor=actor,
        organization=release.bank,
        reason=reason,
        details={"package_aid": release.package_aid, "version": release.package_version, **details},
    )


def _check_agency_reviewer(release: Release, actor: AbstractBaseUser) -> None:
    """An agency operator or admin reviews; never a member of the release's own bank, nor its uploader."""
    who = principal(actor)
    if not who.agency_operator:
        raise ServiceError("only an agency operator reviews releases", code="forbidden")
    if who.has_role(release.bank_id):
        raise ServiceError(
            f"you are a member of {release.bank.name}: another agency operator must review", code="forbidden"
        )
    if release.created_by_id is not None and release.created_by_id == actor.pk:
        raise ServiceError("four eyes: the uploader of a release does not review it", code="forbidden")


def _locked(release: Release) -> Release:
    return Release.objects.select_for_update().select_related("bank").get(pk=release.pk)


def _sign_if_mandated(release: Release, actor: AbstractBaseUser | None) -> None:
    if code_signing.mandated_dap_enabled() and release_gate.agency_signature(release) != release_gate.Signature.VALID:
        _agency_sign(release, actor)


def _agency_sign(release: Release, actor: AbstractBaseUser | None) -> None:
    signature = code_signing.mandated_dap_sign(bytes.fromhex(release.lfdb_sha256), actor=actor)
    release.agency_dap_signature = signature.hex().upper()
    release.save(update_fields=["agency_dap_signature"])
    _record_release(
        release,
        "release.agency_dap_signed",
        actor,
        fingerprint=code_signing.fingerprint(code_signing.mandated_dap_public_point()),
    )


@transaction.atomic
def approve_release(*, release: Release, actor: User) -> Release:
    """An agency operator approves a release awaiting review; under Mandated DAP the agency signs it."""
    release = _locked(release)
    _check_agency_reviewer(release, actor)
    if release.state != Release.State.PENDING:
        raise ServiceError(f"the release is {release.get_state_display().lower()}, not awaiting review", code="state")
    release.state = Release.State.APPROVED
    release.approved_by = actor
    release.approved_at = timezone.now()
    release.save(update_fields=["state", "approved_by", "approved_at"])
    _record_release(release, "release.approved", actor, approval=Release.Approval.REVIEW)
    _sign_if_mandated(release, actor)
    return release


@transaction.atomic
def reject_release(*, release: Release, actor: User, reason: str) -> Release:
    """An agency operator rejects a release awaiting review, saying why (the bank reads it)."""
    release = _locked(release)
    _check_agency_reviewer(release, actor)
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError("say why the release is rejected", field="reason")
    if len(reason) > 1000:
        raise ServiceError("the reason is longer than 1,000 characters", field="reason")
    if release.state != Release.State.PENDING:
        raise ServiceError(f"the release is {release.get_state_display().lower()}, not awaiting review", code="state")
    release.state = Release.State.REJECTED
    release.rejected_by = actor
    release.rejected_at = timezone.now()
    release.rejection_reason = reason
    release.save(update_fields=["state", "rejected_by", "rejected_at", "rejection_reason"])
    _record_release(release, "release.rejected", actor, reason=reason)
    return release


def check_bank_signature(release: Release) -> bool:
    """Whether the release carries a DAP signature of its bank that verifies with the bank's current key."""
    return release_gate.bank_signature(release) == release_gate.Signature.VALID


def _signer_among_other_banks(release: Release, signature: bytes) -> bool:
    digest = bytes.fromhex(release.lfdb_sha256)
    for point in BankDapKey.objects.exclude(bank_id=release.bank_id).values_list("point", flat=True):
        if dap.verify(bytes.fromhex(point), digest, signature):
            return True
    return False


@transaction.atomic
def add_dap_signature(*, release: Release, signature: str | bytes, actor: AbstractBaseUser | None) -> Release:
    """The bank gives its DAP over the release's Load File Data Block hash (``r || s``, hex). It
    must verify with the bank's DAP key; a signature by another bank's key is refused as such."""
    release = _locked(release)
    if actor is not None and not principal(actor).can_operate(release.bank_id):
        raise ServiceError(f"only {release.bank.name}'s operators sign its releases", code="forbidden")
    if release.state not in (Release.State.PENDING, Release.State.APPROVED):
        raise ServiceError(f"the release is {release.get_state_display().lower()}", code="state")
    if isinstance(signature, str) and len(signature) > 4 * dap.SIGNATURE_LENGTH:
        raise ServiceError(f"a DAP signature is {dap.SIGNATURE_LENGTH} bytes (r || s) in hex", field="signature")
    try:
        raw = dap.parse_signature(signature)
    except GPError as exc:
        raise ServiceError(str(exc), field="signature") from None
    point = code_signing.bank_dap_point(release.bank)
    if point is None:
        raise ServiceError(f"{release.bank.name} has no DAP key yet: set it first", field="signature", code="state")
    if not dap.verify(point, bytes.fromhex(release.lfdb_sha256), raw):
        if _signer_among_other_banks(release, raw):
            raise ServiceError(
                f"the signature is by another bank's DAP key, not {release.bank.name}'s", field="signature"
            )
        raise ServiceError(
            f"the signature does not verify with {release.bank.name}'s DAP key over this release's load file hash",
            field="signature",
        )
    text = raw.hex().upper()
    if text == release.dap_signature:
        return release
    replaced = bool(release.dap_signature)
    release.dap_signature = text
    release.save(update_fields=["dap_signature"])
    _record_release(
        release, "release.dap_signed", actor, fingerprint=code_signing.fingerprint(point), replaced=replaced
    )
    return release


@transaction.atomic
def agency_dap_sign(*, release: Release, actor: AbstractBaseUser | None) -> Release:
    """The agency's Mandated DAP on an approved release (done on approval while Mandated DAP is on)."""
    release = _locked(release)
    if actor is not None and not principal(actor).agency_operator:
        raise ServiceError("only the agency gives its Mandated DAP", code="forbidden")
    if not code_signing.mandated_dap_enabled():
        raise ServiceError("Mandated DAP is off", code="state")
    if release.state != Release.State.APPROVED:
        raise ServiceError(f"the release is {release.get_state_display().lower()}, not approved", code="state")
    if release_gate.agency_signature(release) != release_gate.Signature.VALID:
        _agency_sign(release, actor)
    return release


@transaction.atomic
def set_mandated_dap_policy(*, enabled: bool, actor: AbstractBaseUser | None) -> tuple[CodeSigningSettings, int]:
    """Turn Mandated DAP on or off; turning it on signs every approved release that lacks the
    agency's signature, so their rollouts can go on. Returns the settings and how many it signed."""
    settings_row = code_signing.set_mandated_dap(enabled=enabled, actor=actor)
    signed = 0
    if settings_row.mandated_dap:
        for release in Release.objects.filter(state=Release.State.APPROVED).select_related("bank").defer("cap_file"):
            if release_gate.agency_signature(release) != release_gate.Signature.VALID:
                _agency_sign(release, actor)
                signed += 1
    return settings_row, signed


def signature_status(release: Release) -> dict[str, str]:
    """The state of the release's bank and agency DAP signatures, for pages: not required,
    missing, valid or invalid."""
    return {
        "bank": str(release_gate.bank_signature(release)),
        "agency": str(release_gate.agency_signature(release)),
    }


def deployment_refusal(release: Release) -> str | None:
    """Why the release may not go to cards now (None if it may): :mod:`updates.release_gate`. A
    missing bank signature is first asked of the bank's key service (it signs only what the bank
    approved there), so a page shows the state the next rollout would meet."""
    release_gate.obtain_bank_signature(release)
    return release_gate.deployment_refusal(release)
