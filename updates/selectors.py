"""Read operations of the updates app, scoped to what the caller may see."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from issuers.models import Membership, Organization
from issuers.roles import principal
from updates import release_gate
from updates.models import TERMINAL_ORG_KINDS, AgentCredential, Release, WorkerHeartbeat


def heartbeat_for(token: str) -> WorkerHeartbeat | None:
    return WorkerHeartbeat.objects.filter(token=token).first()


def credentials_for(user: AbstractBaseUser) -> QuerySet[AgentCredential]:
    """A card holder sees their own device credentials; nobody else sees any."""
    who = principal(user)
    if not who.is_citizen or who.user_id is None:  # a citizen always has a user id
        return AgentCredential.objects.none()
    return AgentCredential.objects.filter(user_id=who.user_id)


def terminal_organizations_for(user: AbstractBaseUser) -> QuerySet[Organization]:
    """The organisations whose terminals the user manages: those they are an admin of (agency, banks)."""
    who = principal(user)
    admin_of = [org_id for org_id, role in who.roles.items() if role == Membership.Role.ADMIN]
    return Organization.objects.filter(pk__in=admin_of, kind__in=TERMINAL_ORG_KINDS, is_active=True)


def terminal_credentials_for(
    user: AbstractBaseUser, organization: Organization | None = None
) -> QuerySet[AgentCredential]:
    """Terminal credentials of the organisations the user is an admin of (another organisation's are
    not there: a 404); optionally of one of them."""
    credentials = AgentCredential.objects.filter(organization__in=terminal_organizations_for(user))
    if organization is not None:
        credentials = credentials.filter(organization=organization)
    return credentials.select_related("organization", "issued_by").order_by("-created_at", "-id")


def release_dap_blocks(release: Release) -> list[tuple[str, bytes]]:
    """The DAP blocks a load of ``release`` carries, as ``[("bank", r||s), ("agency", r||s)]`` when
    present and valid (GPC 2.3.1 §11.6.2.3). The OTA engine names the bank's SSD AID for "bank" and
    the ISD AID for "agency"."""
    return release_gate.dap_blocks(release)


def pending_releases(user: AbstractBaseUser | None = None) -> QuerySet[Release]:
    """Releases awaiting agency review, oldest first: all of them for the platform (``None``) and
    the agency, a bank's own for its members, none for anyone else."""
    qs = Release.objects.filter(state=Release.State.PENDING).select_related("bank", "created_by").defer("cap_file")
    if user is None:
        return qs.order_by("created_at", "id")
    who = principal(user)
    if who.is_agency or who.is_regulator:
        return qs.order_by("created_at", "id")
    return qs.filter(bank_id__in=who.bank_ids).order_by("created_at", "id")
