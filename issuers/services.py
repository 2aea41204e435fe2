"""Write operations of the issuers app. Each runs in one transaction with its audit entry.

The banks' key services (registration, health, OCE certificates) are in :mod:`issuers.key_services`,
re-exported here."""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from audit.services import record_event
from ecard.errors import ServiceError
from issuers import custody, roles
from issuers.custody_models import KeySet
from issuers.key_services import check_key_service as check_key_service
from issuers.key_services import client_for as client_for
from issuers.key_services import platform_identity as platform_identity
from issuers.key_services import register_key_service as register_key_service
from issuers.key_services import rotate_oce_certificate as rotate_oce_certificate
from issuers.models import AidRange, Invitation, Membership, Organization, SharedMemberApproval, SsdTemplate

_HEX = re.compile(r"^([0-9A-F]{2})*$")


def normalise_hex(value: str, *, field: str, min_bytes: int = 0, max_bytes: int = 16) -> str:
    cleaned = value.replace(" ", "").upper()
    if not _HEX.match(cleaned):
        raise ServiceError("must be hexadecimal with an even number of digits", field=field)
    if not min_bytes <= len(cleaned) // 2 <= max_bytes:
        raise ServiceError(f"must be {min_bytes} to {max_bytes} bytes", field=field)
    return cleaned


# Cyrillic and Greek letters to Latin (ISO 9 / ELOT 743 simplified), so "Банк Москва" gets
# "bank-moskva"; letters without a Latin form (emoji, CJK) leave a generated slug instead.
_TRANSLITERATION = {
    **dict(zip("абвгдезийклмнопрстуфхцыэ", "abvgdezijklmnoprstufhcye", strict=True)),
    "ё": "e",
    "ж": "zh",
    "ч": "ch",
    "ш": "sh",
    "щ": "shch",
    "ъ": "",
    "ь": "",
    "ю": "yu",
    "я": "ya",
    "є": "ye",
    "і": "i",
    "ї": "yi",
    "ґ": "g",
    "ў": "u",
    **dict(zip("αβγδεζηικλμνξοπρστυφω", "abgdeziiklmnxoprstyfo", strict=True)),
    "θ": "th",
    "χ": "ch",
    "ψ": "ps",
    "ς": "s",
}
_SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")
SLUG_MAX = 64


def transliterate(text: str) -> str:
    """ASCII approximation of ``text``: Cyrillic/Greek transliterated, accents dropped, the rest removed."""
    out = []
    for char in unicodedata.normalize("NFC", text).lower():
        if char in _TRANSLITERATION:
            char = _TRANSLITERATION[char]
        else:  # accented letters: transliterate the base letter, drop the marks
            char = "".join(_TRANSLITERATION.get(c, c) for c in unicodedata.normalize("NFKD", char))
        out.append(char.encode("ascii", "ignore").decode("ascii"))
    return "".join(out)


def generate_slug(name: str, kind: str) -> str:
    """A unique, never empty slug for an organisation named ``name``."""
    base = slugify(transliterate(name))[: SLUG_MAX - 9].strip("-_") or f"{kind}-{secrets.token_hex(4)}"
    candidate, number = base, 2
    while Organization.objects.filter(slug=candidate).exists():
        candidate = f"{base}-{number}"
        number += 1
    return candidate


@transaction.atomic
def create_organization(*, name: str, kind: str, slug: str = "", actor: User | None = None) -> Organization:
    if kind not in Organization.Kind.values:
        raise ServiceError(f"unknown organisation kind {kind!r}", field="kind")
    name = (name or "").strip()
    if not name:
        raise ServiceError("the organisation needs a name", field="name")
    if slug and (len(slug) > SLUG_MAX or not _SLUG.match(slug)):
        raise ServiceError("a slug is letters, digits, hyphens and underscores (ASCII)", field="slug")
    if Organization.objects.filter(name=name).exists() or (slug and Organization.objects.filter(slug=slug).exists()):
        raise ServiceError("an organisation with this name or slug exists", field="name", code="duplicate")
    slug = slug or generate_slug(name, kind)
    organization = Organization.objects.create(name=name, slug=slug, kind=kind)
    if kind == Organization.Kind.AGENCY:
        ensure_agency_keys(organization, actor=actor)
    record_event(
        action="organization.created",
        subject_type="organization",
        subject_id=organization.slug,
        actor=actor,
        organization=organization,
        details={"kind": kind, "name": name},
    )
    return organization


# --------------------------------------------------------------------------- membership rules
#
# Who may belong to an organisation (the same rules for invitations, their acceptance and the
# direct add_member of seed commands): a card holder (citizen) is never a member; an agency or
# regulator account belongs to that one organisation only; a bank member joins a second bank only
# when the agency approved it (SharedMemberApproval).


def membership_refusal(*, organization: Organization, user: User) -> ServiceError | None:
    """Why ``user`` may not become a member of ``organization`` (None: they may)."""
    if user.cards.exists():
        return ServiceError(
            "a card holder (citizen account) is never an organisation member", field="username", code="card_holder"
        )
    others = list(
        Membership.objects.filter(user=user).exclude(organization=organization).select_related("organization")
    )
    if not others:
        return None
    exclusive = [m.organization for m in others if not m.organization.is_bank]
    if exclusive or not organization.is_bank:
        return ServiceError(
            "agency and regulator accounts belong to their one organisation only; "
            "this user already belongs to another organisation",
            field="username",
            code="exclusive_account",
        )
    if not SharedMemberApproval.objects.filter(user=user, organization=organization).exists():
        return ServiceError(
            "this user already belongs to another organisation; an agency operator must allow them "
            "to join this one too (sharing approval)",
            field="username",
            code="needs_agency_approval",
        )
    return None


def _check_may_join(organization: Organization, user: User) -> None:
    refusal = membership_refusal(organization=organization, user=user)
    if refusal is not None:
        raise refusal


# Refusals that would tell an inviting admin something private about another account: that it
# holds a card (a citizen) or belongs to the agency or the regulator.
_PRIVATE_REFUSALS = frozenset({"card_holder", "exclusive_account"})


def not_invitable() -> ServiceError:
    """One answer for an unknown username and for an account the rules keep out for a private
    reason, so that inviting does not enumerate citizens or agency staff."""
    return ServiceError("this user cannot be invited to the organisation", field="username", code="not_invitable")


def _is_org_admin(actor: User | None, organization: Organization) -> bool:
    return actor is None or roles.principal(actor).has_role(organization.pk, Membership.Role.ADMIN)


@transaction.atomic
def add_member(*, organization: Organization, user: User, role: str, actor: User | None = None) -> Membership:
    """Make ``user`` a member directly, without an invitation: for the platform's own bootstrap
    (seed commands, tests). The API and portal never call it: admins invite
    (:func:`invite_member`) and the user accepts. The membership rules apply all the same."""
    if role not in Membership.Role.values:
        raise ServiceError(f"unknown role {role!r}", field="role")
    _check_may_join(organization, user)
    membership, created = Membership.objects.update_or_create(
        user=user, organization=organization, defaults={"role": role}
    )
    roles.forget(user)
    record_event(
        action="member.added" if created else "member.role_changed",
        subject_type="membership",
        subject_id=membership.pk,
        actor=actor,
        organization=organization,
        details={"user": user.get_username(), "role": role},
    )
    return membership


# --------------------------------------------------------------------------- invitations


def _invitation_event(invitation: Invitation, action: str, actor: User | None) -> None:
    record_event(
        action=action,
        subject_type="invitation",
        subject_id=invitation.pk,
        actor=actor,
        organization=invitation.organization,
        details={"user": invitation.user.get_username(), "role": invitation.role},
    )


@transaction.atomic
def invite_member(*, organization: Organization, user: User, role: str, actor: User | None) -> Invitation:
    """An organisation admin invites ``user``; nothing is granted until the user accepts."""
    if role not in Membership.Role.values:
        raise ServiceError(f"unknown role {role!r}", field="role")
    if not _is_org_admin(actor, organization):
        raise ServiceError("only an administrator of the organisation invites members", code="not_admin")
    if not organization.is_active:
        raise ServiceError("the organisation is suspended", field="organization", code="state")
    if Membership.objects.filter(user=user, organization=organization).exists():
        raise ServiceError("this user is already a member of the organisation", field="username", code="duplicate")
    refusal = membership_refusal(organization=organization, user=user)
    if refusal is not None:
        raise not_invitable() if refusal.code in _PRIVATE_REFUSALS else refusal
    try:
        with transaction.atomic():
            invitation = Invitation.objects.create(
                organization=organization,
                user=user,
                role=role,
                invited_by=actor if actor is not None and getattr(actor, "pk", None) else None,
            )
    except IntegrityError as exc:
        raise ServiceError(
            "this user already has a pending invitation to the organisation", field="username", code="duplicate"
        ) from exc
    _invitation_event(invitation, "invitation.created", actor)
    return invitation


def _decide(invitation: Invitation, state: str, actor: User | None) -> Invitation:
    """Record the answer to a pending invitation (accepted, declined, revoked), with its entry."""
    invitation.state = state
    invitation.decided_at = timezone.now()
    invitation.save(update_fields=["state", "decided_at"])
    _invitation_event(invitation, f"invitation.{state}", actor)
    return invitation


def _locked_pending(invitation: Invitation) -> Invitation:
    invitation = (
        Invitation.objects.select_for_update(of=("self",)).select_related("organization", "user").get(pk=invitation.pk)
    )
    if invitation.state != Invitation.State.PENDING:
        raise ServiceError(f"the invitation is {invitation.state}", code="state")
    return invitation


@transaction.atomic
def accept_invitation(*, invitation: Invitation, user: User) -> Membership:
    """The invited user accepts: the membership exists from now on. The membership rules are
    checked again (the user may have got a card or joined another organisation since)."""
    invitation = _locked_pending(invitation)
    if invitation.user_id != user.pk:
        raise ServiceError("this invitation is addressed to someone else", code="not_found")
    if not invitation.organization.is_active:
        raise ServiceError("the organisation is suspended", field="organization", code="state")
    _check_may_join(invitation.organization, user)
    membership, _created = Membership.objects.get_or_create(
        user=user, organization=invitation.organization, defaults={"role": invitation.role}
    )
    _decide(invitation, Invitation.State.ACCEPTED, user)
    roles.forget(user)
    record_event(
        action="member.added",
        subject_type="membership",
        subject_id=membership.pk,
        actor=user,
        organization=invitation.organization,
        details={"user": user.get_username(), "role": membership.role, "invitation": invitation.pk},
    )
    return membership


@transaction.atomic
def decline_invitation(*, invitation: Invitation, user: User) -> Invitation:
    invitation = _locked_pending(invitation)
    if invitation.user_id != user.pk:
        raise ServiceError("this invitation is addressed to someone else", code="not_found")
    return _decide(invitation, Invitation.State.DECLINED, user)


@transaction.atomic
def revoke_invitation(*, invitation: Invitation, actor: User | None) -> Invitation:
    invitation = _locked_pending(invitation)
    if not _is_org_admin(actor, invitation.organization):
        raise ServiceError("only an administrator of the organisation revokes its invitations", code="not_admin")
    return _decide(invitation, Invitation.State.REVOKED, actor)


@transaction.atomic
def approve_shared_member(*, organization: Organization, user: User, actor: User | None) -> SharedMemberApproval:
    """An agency operator allows a member of another bank to be invited to ``organization`` too."""
    who = roles.principal(actor) if actor is not None else None
    if who is not None and not who.agency_operator:
        raise ServiceError("only an agency operator allows a user to join a second bank", code="not_agency")
    if not organization.is_bank:
        raise ServiceError("only bank memberships can be shared", field="organization", code="exclusive_account")
    if user.cards.exists():
        raise ServiceError(
            "a card holder (citizen account) is never an organisation member", field="username", code="card_holder"
        )
    if Membership.objects.filter(user=user).exclude(organization__kind=Organization.Kind.BANK).exists():
        raise ServiceError(
            "agency and regulator accounts belong to their one organisation only",
            field="username",
            code="exclusive_account",
        )
    approval, created = SharedMemberApproval.objects.get_or_create(
        user=user,
        organization=organization,
        defaults={"approved_by": actor if actor is not None and getattr(actor, "pk", None) else None},
    )
    if created:
        agency = Organization.objects.filter(pk__in=who.org_ids(Organization.Kind.AGENCY)).first() if who else None
        record_event(
            action="member.sharing_approved",
            subject_type="shared_member_approval",
            subject_id=approval.pk,
            actor=actor,
            actor_org=agency,
            organization=organization,
            details={"user": user.get_username()},
        )
    return approval


@transaction.atomic
def remove_member(*, membership: Membership, actor: User | None = None) -> None:
    organization, username, pk = membership.organization, membership.user.get_username(), membership.pk
    if (
        membership.role == Membership.Role.ADMIN
        and not Membership.objects.filter(organization=organization, role=Membership.Role.ADMIN).exclude(pk=pk).exists()
    ):
        raise ServiceError("an organisation keeps at least one administrator", code="last_admin")
    user = membership.user
    membership.delete()
    roles.forget(user)
    record_event(
        action="member.removed",
        subject_type="membership",
        subject_id=pk,
        actor=actor,
        organization=organization,
        details={"user": username},
    )


@transaction.atomic
def add_aid_range(*, organization: Organization, rid: str, pix_prefix: str = "", actor: User | None = None) -> AidRange:
    """Give a bank an AID range. Ranges of different banks may not overlap (ISO 7816-5 AIDs are
    matched by prefix, so overlap means one prefix starts the other)."""
    if not organization.is_bank:
        raise ServiceError("only banks have AID ranges", field="organization")
    rid = normalise_hex(rid, field="rid", min_bytes=5, max_bytes=5)
    pix_prefix = normalise_hex(pix_prefix, field="pix_prefix", min_bytes=0, max_bytes=11)
    prefix = rid + pix_prefix
    # Lock all ranges so two concurrent admissions cannot both pass the overlap check.
    existing = list(AidRange.objects.select_for_update().values_list("prefix", "organization_id"))
    for other_prefix, other_org in existing:
        if prefix.startswith(other_prefix) or other_prefix.startswith(prefix):
            if other_org == organization.pk and other_prefix == prefix:
                raise ServiceError("this range is already assigned to this bank", field="pix_prefix")
            if other_org != organization.pk:
                raise ServiceError("overlaps the AID range of another bank", field="pix_prefix", code="overlap")
    aid_range = AidRange.objects.create(organization=organization, rid=rid, pix_prefix=pix_prefix)
    record_event(
        action="aid_range.assigned",
        subject_type="aid_range",
        subject_id=aid_range.prefix,
        actor=actor,
        organization=organization,
        details={"prefix": aid_range.prefix},
    )
    return aid_range


@transaction.atomic
def set_ssd_template(
    *,
    organization: Organization,
    management: str = SsdTemplate.Management.DELEGATED,
    scp: int = 0x03,
    scp_i: int | None = None,
    key_length: int = 16,
    ssd_aid_suffix: str = "5344",
    default_applets: Sequence[dict[str, Any]] = (),
    actor: User | None = None,
) -> SsdTemplate:
    if not organization.is_bank:
        raise ServiceError("only banks have SSD templates", field="organization")
    if scp_i is None:
        scp_i = {0x03: 0x70, 0x11: 0x00}.get(scp, 0x55)
    template = SsdTemplate(
        organization=organization,
        management=management,
        scp=scp,
        scp_i=scp_i,
        key_algorithm=SsdTemplate.KeyAlgorithm.DES3 if scp == 0x02 else SsdTemplate.KeyAlgorithm.AES,
        key_length=key_length,
        ssd_aid_suffix=normalise_hex(ssd_aid_suffix, field="ssd_aid_suffix", max_bytes=8),
        default_applets=list(default_applets),
    )
    if management not in SsdTemplate.Management.values:
        raise ServiceError("management must be dm or am", field="management")
    try:
        template.clean()
    except Exception as exc:  # ValidationError: report the first message
        raise ServiceError(" ".join(getattr(exc, "messages", [str(exc)])), field="scp") from exc
    existing = SsdTemplate.objects.filter(organization=organization).first()
    if existing is not None:
        template.pk = existing.pk
    template.save()
    record_event(
        action="ssd_template.set",
        subject_type="ssd_template",
        subject_id=organization.slug,
        actor=actor,
        organization=organization,
        details={"management": management, "scp": scp, "scp_i": scp_i, "key_length": key_length},
    )
    return template


# ---------------------------------------------------------------------------------------------
# the bank's own edits of its SSD template (issue 18): its SCP and its default applets


@dataclass(frozen=True)
class ReleaseFacts:
    """What the template needs of a release (releases live in ``updates``, above this app: it
    registers :func:`register_release_resolver` in its ``ready``)."""

    id: int
    bank_id: int
    state: str
    approved: bool
    package_aid: str
    package_version: str
    applet_aids: tuple[str, ...]


ReleaseResolver = Callable[[Sequence[int]], dict[int, ReleaseFacts]]
_release_resolver: ReleaseResolver | None = None


def register_release_resolver(resolver: ReleaseResolver) -> None:
    global _release_resolver
    _release_resolver = resolver


MAX_DEFAULT_APPLETS = 8
MAX_INSTALL_PARAMS_BYTES = 64  # the C9 application-specific value (GP 2.3.1 §11.5.2.3.7)
MAX_APPLET_NAME = 60
# GP 2.3.1 §11.1.2: privileges a bank may give an applet instance (1 or 3 bytes). Byte 2: 01
# Global Service; byte 3 (Amendment C): 20 Contactless Activation, 10 Contactless Self-Activation.
# Everything else belongs to security domains (SD, DAP, DM, AM, token, receipt, ciphered load) or
# to the card issuer (card lock/terminate/reset, CVM, Trusted Path, global delete/lock/registry,
# final application), as the cards enforce (an SSD's INSTALL with them is refused).
ALLOWED_APPLET_PRIVILEGES = bytes((0x00, 0x01, 0x30))
SCP_CHOICES = (0x02, 0x03, 0x11)


def _template_summary(template: SsdTemplate) -> dict[str, Any]:
    """What an audit entry says of a template: public facts, never key material."""
    return {
        "scp": template.scp,
        "scp_i": template.scp_i,
        "key_algorithm": template.key_algorithm,
        "key_length": template.key_length,
        "default_applets": [
            {k: a.get(k) for k in ("release", "instance_aid", "privileges", "install_params") if k in a}
            for a in template.default_applets
        ],
    }


def _applet_privileges(value: Any, field: str) -> str:
    text = normalise_hex(str(value if value is not None else "00"), field=field, min_bytes=1, max_bytes=3)
    raw = bytes.fromhex(text)
    if len(raw) == 2:
        raise ServiceError("privileges are 1 or 3 bytes (GP 2.3.1 §11.1.2)", field=field)
    refused = bytes(b & ~ALLOWED_APPLET_PRIVILEGES[n] & 0xFF for n, b in enumerate(raw))
    if any(refused):
        raise ServiceError(
            f"privileges {refused.hex().upper()} are a security domain's or the card issuer's; an applet may have "
            "only Trusted Path (00 80 00), Global Service (00 01 00) and contactless activation (00 00 30)",
            field=field,
        )
    return text


def validate_default_applets(organization: Organization, entries: Any) -> list[dict[str, Any]]:
    """The default applets as the enrollment job reads them (``updates.ota.SsdInstallApplets``):
    ``{"release", "instance_aid", "module_aid", "privileges", "install_params", "package_aid"[, "name"]}``.

    Each entry: ``release_id`` (an approved release of the bank), ``instance_aid`` (in the bank's AID
    range, unique), optional ``module_aid`` (one of the release's applets), ``install_params`` (hex, the
    C9 value, at most 64 bytes), ``privileges`` (hex, 1 or 3 bytes, application privileges only),
    optional ``name``. One instance per package (the enrollment loads each entry's package once)."""
    if not isinstance(entries, list | tuple):
        raise ServiceError("default_applets must be a list", field="default_applets")
    if len(entries) > MAX_DEFAULT_APPLETS:
        raise ServiceError(f"at most {MAX_DEFAULT_APPLETS} default applets", field="default_applets")
    ids: list[int] = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ServiceError(f"applet {n}: an object with release_id and instance_aid", field="default_applets")
        raw_id = entry.get("release_id", entry.get("release"))
        if isinstance(raw_id, bool) or not isinstance(raw_id, int | str) or not str(raw_id).isascii():
            raise ServiceError(f"applet {n}: release_id is a release number", field="default_applets")
        if not str(raw_id).strip().isdigit() or not 0 < int(raw_id) < 2**63:
            raise ServiceError(f"applet {n}: release_id is a release number", field="default_applets")
        ids.append(int(raw_id))
    if _release_resolver is None:
        raise ServiceError("releases cannot be checked right now", code="unavailable")
    releases = _release_resolver(ids) if ids else {}
    prefixes = bank_aid_prefixes(organization)
    template = getattr(organization, "ssd_template", None)
    ssd_aid = prefixes[0] + template.ssd_aid_suffix if prefixes and template is not None else ""
    out: list[dict[str, Any]] = []
    seen_instances: set[str] = set()
    seen_packages: set[str] = set()
    for n, (entry, release_id) in enumerate(zip(entries, ids, strict=True), start=1):
        field = "default_applets"
        release = releases.get(release_id)
        if release is None or release.bank_id != organization.pk:
            raise ServiceError(f"applet {n}: {organization.name} has no release {release_id}", field=field)
        if not release.approved:
            raise ServiceError(
                f"applet {n}: release {release.package_aid} v{release.package_version} is {release.state}, "
                "not approved",
                field=field,
            )
        if release.package_aid in seen_packages:
            raise ServiceError(f"applet {n}: package {release.package_aid} is already listed", field=field)
        seen_packages.add(release.package_aid)
        try:
            instance = normalise_hex(str(entry.get("instance_aid") or ""), field=field, min_bytes=5, max_bytes=16)
        except ServiceError as exc:
            raise ServiceError(f"applet {n}: instance_aid {exc.message}", field=field) from None
        if not any(instance.startswith(p) for p in prefixes):
            raise ServiceError(
                f"applet {n}: instance AID {instance} is outside {organization.name}'s AID range", field=field
            )
        if instance in (ssd_aid, release.package_aid) or instance in seen_instances:
            raise ServiceError(f"applet {n}: instance AID {instance} is already used", field=field)
        seen_instances.add(instance)
        module = str(entry.get("module_aid") or "").replace(" ", "").upper()
        if module and module not in release.applet_aids:
            raise ServiceError(f"applet {n}: module {module} is not an applet of the release", field=field)
        if not module:
            if not release.applet_aids:
                raise ServiceError(f"applet {n}: the release is a library (no applet to install)", field=field)
            module = release.applet_aids[0]
        try:
            params = normalise_hex(
                str(entry.get("install_params") or ""), field=field, max_bytes=MAX_INSTALL_PARAMS_BYTES
            )
        except ServiceError as exc:
            raise ServiceError(f"applet {n}: install_params {exc.message}", field=field) from None
        try:
            privileges = _applet_privileges(entry.get("privileges"), field)
        except ServiceError as exc:
            raise ServiceError(f"applet {n}: {exc.message}", field=field) from None
        spec: dict[str, Any] = {
            "release": release.id,
            "instance_aid": instance,
            "module_aid": module,
            "privileges": privileges,
            "install_params": params,
            "package_aid": release.package_aid,
        }
        name = entry.get("name")
        if name is not None:
            if not isinstance(name, str) or len(name) > MAX_APPLET_NAME or not name.isprintable():
                raise ServiceError(
                    f"applet {n}: name is printable text of at most {MAX_APPLET_NAME} characters", field=field
                )
            if name.strip():
                spec["name"] = name.strip()
        out.append(spec)
    return out


@transaction.atomic
def update_ssd_template(
    *, organization: Organization, actor: User | None, scp: int | None = None, default_applets: Any = None
) -> SsdTemplate:
    """A bank changes the SCP its new security domains speak and the applets a new enrollment gets.

    Cards already enrolled keep what they have: an enrollment copies the template into its job when
    the citizen consents (``cards.services.request_enrollment``). Audited with the template before
    and after (no key material is in a template)."""
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    if actor is not None and not roles.principal(actor).can_operate(organization.pk):
        raise ServiceError(f"only {organization.name}'s operators edit its template", code="forbidden")
    if not organization.is_bank:
        raise ServiceError("only banks have SSD templates", field="organization")
    template = SsdTemplate.objects.select_for_update().filter(organization=organization).first()
    if template is None:
        raise ServiceError(f"{organization.name} has no SSD template; the agency sets it at admission", code="state")
    before = _template_summary(template)
    if scp is not None:
        if isinstance(scp, bool) or scp not in SCP_CHOICES:
            raise ServiceError("SCP must be 02, 03 or 11", field="scp")
        if scp != template.scp:
            if scp == 0x11 and not organization_has_key_service(organization):
                raise ServiceError(
                    "SCP11 security domains are keyed by your key service: the agency registers it first", field="scp"
                )
            template.scp = scp
            template.scp_i = {0x03: 0x70, 0x11: 0x00}.get(scp, 0x55)
            if scp == 0x02:
                template.key_algorithm, template.key_length = SsdTemplate.KeyAlgorithm.DES3, 16
            else:
                template.key_algorithm = SsdTemplate.KeyAlgorithm.AES
                if template.key_length not in (16, 24, 32):
                    template.key_length = 16
    if default_applets is not None:
        template.default_applets = validate_default_applets(organization, default_applets)
    try:
        template.clean()
    except Exception as exc:  # ValidationError: report the first message
        raise ServiceError(" ".join(getattr(exc, "messages", [str(exc)])), field="scp") from exc
    after = _template_summary(template)
    if after == before:
        return template
    template.save()
    record_event(
        action="ssd_template.updated",
        subject_type="ssd_template",
        subject_id=organization.slug,
        actor=actor,
        actor_org=organization if actor is not None else None,
        organization=organization,
        details={"before": before, "after": after},
    )
    return template


def organization_has_key_service(organization: Organization) -> bool:
    service = getattr(organization, "key_service", None)
    return service is not None and service.is_active


@transaction.atomic
def admit_bank(
    *,
    name: str,
    rid: str,
    pix_prefix: str = "",
    slug: str = "",
    management: str = SsdTemplate.Management.DELEGATED,
    scp: int = 0x03,
    key_length: int = 16,
    actor: User | None = None,
) -> Organization:
    """Admit a bank: organisation, AID range, SSD template and its key-encryption key, in one step."""
    bank = create_organization(name=name, kind=Organization.Kind.BANK, slug=slug, actor=actor)
    add_aid_range(organization=bank, rid=rid, pix_prefix=pix_prefix, actor=actor)
    set_ssd_template(organization=bank, management=management, scp=scp, key_length=key_length, actor=actor)
    custody.ensure_org_kek(bank, actor=actor)
    record_event(
        action="bank.admitted",
        subject_type="organization",
        subject_id=bank.slug,
        actor=actor,
        organization=bank,
        details={"prefix": rid.upper() + pix_prefix.upper(), "management": management, "scp": scp},
    )
    return bank


def bank_aid_prefixes(organization: Organization) -> list[str]:
    return list(organization.aid_ranges.values_list("prefix", flat=True))


def aid_in_bank_range(organization: Organization, aid_hex: str) -> bool:
    return any(aid_hex.upper().startswith(prefix) for prefix in bank_aid_prefixes(organization))


@transaction.atomic
def set_organization_active(*, organization: Organization, is_active: bool, actor: User | None = None) -> Organization:
    """Suspend or reinstate an organisation (a suspended bank gets no new enrollments or tokens)."""
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    if organization.is_agency and not is_active:
        raise ServiceError("the agency cannot suspend itself", field="is_active")
    if organization.is_active == is_active:
        return organization
    organization.is_active = is_active
    organization.save(update_fields=["is_active"])
    record_event(
        action="organization.reinstated" if is_active else "organization.suspended",
        subject_type="organization",
        subject_id=organization.slug,
        actor=actor,
        organization=organization,
    )
    return organization


AGENCY_MASTER_KVN = {"aes": 0x30, "3des": 0x20}
TOKEN_SIGNING_KVN = 0x70


def ensure_agency_keys(agency: Organization, *, actor: User | None = None) -> None:
    """The agency's custody: KEK, ISD diversification masters (AES for SCP03/KDF3, 3DES for SCP02/EMV)
    and the Delegated Management token signing key (ECDSA P-256). Idempotent; keys are generated in
    custody and never leave it in clear."""
    custody.ensure_org_kek(agency, actor=actor)
    existing = KeySet.objects.filter(organization=agency, card_cin="", state=KeySet.State.ACTIVE)
    masters: tuple[tuple[Literal["aes", "3des"], int], ...] = (("aes", 16), ("3des", 16))
    for algorithm, length in masters:
        if not existing.filter(purpose=KeySet.Purpose.DIVERSIFICATION_MASTER, algorithm=algorithm).exists():
            custody.store_master_key(
                agency, secrets.token_bytes(length), AGENCY_MASTER_KVN[algorithm], algorithm=algorithm, actor=actor
            )
    if not existing.filter(purpose=KeySet.Purpose.TOKEN_SIGNING).exists():
        custody.generate_private_key(
            agency, purpose=KeySet.Purpose.TOKEN_SIGNING, algorithm="ec-p256", kvn=TOKEN_SIGNING_KVN, actor=actor
        )
