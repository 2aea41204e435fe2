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

from audit.security import Kind as SecurityKind
from audit.security import records_refusals
from audit.services import record_event
from ecard.errors import ServiceError
from gp import commands
from gp.cap import LoadFile
from gp.errors import GPError
from gp.javacard import ROM_PACKAGES
from issuers.models import Organization
from issuers.roles import principal
from issuers.services import aid_in_bank_range
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
            )
    except IntegrityError as exc:
        raise ServiceError("this release already exists", field="cap_file", code="duplicate") from exc
    record_event(
        action="release.created",
        subject_type="release",
        subject_id=release.pk,
        actor=actor,
        organization=bank,
        details={"package_aid": package_aid, "version": version, "lfdb_sha256": release.lfdb_sha256},
    )
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
