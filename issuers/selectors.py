"""Read operations of the issuers app, scoped to what the caller may see."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from django.utils import timezone

from issuers.custody_models import KeySet
from issuers.key_services import EXPIRY_WARNING_DAYS
from issuers.models import BankKeyService, Invitation, Membership, Organization, SharedMemberApproval
from issuers.roles import principal


def user_profile(user: User) -> dict[str, Any]:
    """What the API tells a signed-in user about themselves."""
    who = principal(user)
    memberships = Membership.objects.filter(user=user).select_related("organization")
    return {
        "username": user.get_username(),
        "organizations": [
            {"slug": m.organization.slug, "name": m.organization.name, "kind": m.organization.kind, "role": m.role}
            for m in memberships
        ],
        "is_citizen": who.is_citizen,
    }


def organizations_for(user: User) -> QuerySet[Organization]:
    """Agency and regulators see every organisation; a bank sees itself; citizens see active banks
    (to choose one for enrollment)."""
    who = principal(user)
    if not who.is_authenticated:
        return Organization.objects.none()
    if who.is_agency or who.is_regulator:
        return Organization.objects.all()
    if who.is_member:
        return Organization.objects.filter(pk__in=who.org_ids())
    return Organization.objects.filter(kind=Organization.Kind.BANK, is_active=True)


def organization_details_visible(user: User, organization: Organization) -> bool:
    """AID ranges and templates: to the agency, regulators and the organisation's own members."""
    who = principal(user)
    return who.is_agency or who.is_regulator or organization.pk in who.roles


def memberships_for(user: User) -> QuerySet[Membership]:
    who = principal(user)
    if not who.is_authenticated:
        return Membership.objects.none()
    scope = Q() if who.is_agency or who.is_regulator else Q(organization_id__in=who.org_ids())
    return Membership.objects.filter(scope).select_related("user", "organization")


def _administered(who) -> list[int]:
    return [org_id for org_id in who.org_ids() if who.has_role(org_id, Membership.Role.ADMIN)]


def invitations_for(user: User) -> QuerySet[Invitation]:
    """The invitations addressed to the user, and those of organisations they administer; the
    agency and regulators see all."""
    who = principal(user)
    if not who.is_authenticated:
        return Invitation.objects.none()
    invitations = Invitation.objects.select_related("organization", "user", "invited_by")
    if who.is_agency or who.is_regulator:
        return invitations.all()
    return invitations.filter(Q(user_id=who.user_id) | Q(organization_id__in=_administered(who)))


def pending_invitations_of(user: User) -> QuerySet[Invitation]:
    """Invitations the user has to answer (portal)."""
    if not user.is_authenticated:
        return Invitation.objects.none()
    return Invitation.objects.filter(user=user, state=Invitation.State.PENDING).select_related("organization")


def shared_member_approvals_for(user: User) -> QuerySet[SharedMemberApproval]:
    """The agency and regulators see every approval; a bank's admins see those for their bank."""
    who = principal(user)
    if not who.is_authenticated:
        return SharedMemberApproval.objects.none()
    approvals = SharedMemberApproval.objects.select_related("organization", "user", "approved_by")
    if who.is_agency or who.is_regulator:
        return approvals.all()
    return approvals.filter(organization_id__in=_administered(who))


def report_bank_choices() -> list[tuple[str, str]]:
    """(slug, name) of every bank with a slug: what an oversight report may be narrowed to."""
    banks = Organization.objects.filter(kind=Organization.Kind.BANK).exclude(slug="").order_by("name")
    return [(bank.slug, bank.name) for bank in banks]


def active_banks() -> QuerySet[Organization]:
    return Organization.objects.filter(kind=Organization.Kind.BANK, is_active=True).select_related("ssd_template")


def key_sets_for(user: User):
    """Key set metadata (never key bytes): banks and the agency see their own in full, the agency
    sees banks' KVN and algorithm only (the serializer trims), regulators see all metadata,
    citizens none."""
    who = principal(user)
    if not who.is_authenticated or who.is_citizen:
        return KeySet.objects.none()
    key_sets = KeySet.objects.select_related("organization")
    if who.is_agency or who.is_regulator:
        return key_sets.all()
    return key_sets.filter(organization_id__in=who.org_ids())


def key_set_details_visible(user: User, organization_id: int) -> bool:
    """Full metadata (KCVs, lengths, public keys): the owner's members and regulators."""
    who = principal(user)
    return who.is_regulator or organization_id in who.roles


def key_service_visible(user: User, organization: Organization) -> bool:
    """A bank's key service status: the agency's staff, regulators and the bank's own members."""
    return organization.is_bank and organization_details_visible(user, organization)


_KEY_SERVICE_FIELDS = (
    "is_active",
    "endpoint",
    "certificate_sha256",
    "registered_at",
    "registered_by",
    "reachable",
    "checked_at",
    "last_error",
    "journal_size",
    "oce_certificate_issued",
    "oce_not_after",
    "oce_days_left",
    "oce_expires_soon",
)


def key_service_status(organization: Organization, *, now: datetime | None = None) -> dict[str, Any]:
    """What the portal and the API show of a bank's key service (never key material)."""
    service = BankKeyService.objects.filter(organization=organization).first()
    if service is None:
        return {"bank": organization.slug, "registered": False, **dict.fromkeys(_KEY_SERVICE_FIELDS)}
    now = now or timezone.now()
    days_left = None
    if service.oce_not_after is not None:
        days_left = (service.oce_not_after - now).days
    return {
        "bank": organization.slug,
        "registered": True,
        "is_active": service.is_active,
        "endpoint": service.endpoint,
        "certificate_sha256": service.certificate_sha256,
        "registered_at": service.registered_at,
        "registered_by": service.registered_by.get_username() if service.registered_by else None,
        "reachable": service.reachable,
        "checked_at": service.checked_at,
        "last_error": service.last_error,
        "journal_size": service.journal_size,
        "oce_certificate_issued": bool(service.oce_certificate),
        "oce_not_after": service.oce_not_after,
        "oce_days_left": days_left,
        "oce_expires_soon": days_left is not None and days_left < EXPIRY_WARNING_DAYS,
    }
