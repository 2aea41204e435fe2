"""Who a user is on the platform: memberships resolved once per request.

A user is an agency, bank or regulator member through :class:`issuers.models.Membership`;
a citizen is a user who holds a card and has no membership. Selectors scope every read with
these helpers, so the API and the portal apply the same rules. :func:`principal` is also the
resolver behind :func:`ecard.principals.principal` (registered in ``issuers.apps``), through which
the core and the audit log, which sit below issuers, ask the same questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser

from issuers.models import Membership, Organization

_CACHE_ATTR = "_ecard_principal"


@dataclass(frozen=True)
class Principal:
    """The organisations (by kind) a user belongs to, with roles."""

    user_id: int | None
    roles: dict[int, str] = field(default_factory=dict)  # organization id -> role
    kinds: dict[int, str] = field(default_factory=dict)  # organization id -> kind
    slugs: dict[int, str] = field(default_factory=dict)  # organization id -> slug ("" if it has none)
    # Member of a suspended organisation: no rights through it, and not a citizen either.
    suspended_member: bool = False

    def org_ids(self, kind: str | None = None) -> list[int]:
        return [org_id for org_id, k in self.kinds.items() if kind is None or k == kind]

    @property
    def is_authenticated(self) -> bool:
        return self.user_id is not None

    @property
    def is_agency(self) -> bool:
        return bool(self.org_ids(Organization.Kind.AGENCY))

    @property
    def is_regulator(self) -> bool:
        return bool(self.org_ids(Organization.Kind.REGULATOR))

    @property
    def bank_ids(self) -> list[int]:
        return self.org_ids(Organization.Kind.BANK)

    @property
    def bank_slugs(self) -> list[str]:
        """The slugs of the user's banks (the audit log names organisations by slug); never empty ones."""
        return [self.slugs[org_id] for org_id in self.bank_ids if self.slugs.get(org_id)]

    @property
    def is_member(self) -> bool:
        return bool(self.kinds)

    @property
    def is_citizen(self) -> bool:
        """An account that belongs to no organisation. Staff of a suspended organisation lose its
        rights but do not become citizens (who may issue agent credentials and enroll banks)."""
        return self.is_authenticated and not self.is_member and not self.suspended_member

    def has_role(self, organization_id: int, *roles: str) -> bool:
        role = self.roles.get(organization_id)
        return role is not None and (not roles or role in roles)

    def can_operate(self, organization_id: int) -> bool:
        """Admins and operators act for their organisation; auditors only read."""
        return self.has_role(organization_id, Membership.Role.ADMIN, Membership.Role.OPERATOR)

    @property
    def agency_operator(self) -> bool:
        return any(self.can_operate(org_id) for org_id in self.org_ids(Organization.Kind.AGENCY))


def principal(user: AbstractBaseUser | AnonymousUser | None) -> Principal:
    if user is None or not user.is_authenticated:
        return Principal(user_id=None)
    cached = getattr(user, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    roles: dict[int, str] = {}
    kinds: dict[int, str] = {}
    slugs: dict[int, str] = {}
    suspended = False
    for membership in Membership.objects.filter(user_id=user.pk).select_related("organization"):
        if not membership.organization.is_active:
            suspended = True
            continue
        roles[membership.organization_id] = membership.role
        kinds[membership.organization_id] = membership.organization.kind
        slugs[membership.organization_id] = membership.organization.slug
    result = Principal(user_id=user.pk, roles=roles, kinds=kinds, slugs=slugs, suspended_member=suspended)
    setattr(user, _CACHE_ATTR, result)
    return result


def forget(user: AbstractBaseUser) -> None:
    """Drop the cached principal (after membership changes)."""
    if hasattr(user, _CACHE_ATTR):
        delattr(user, _CACHE_ATTR)
