"""Who may open which portal page. The rules are those of the selectors (issuers.roles): a page of
another bank, or of a card that is not yours, does not exist for you (404); a page of another
role is refused (403)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse

from ecard.requests import AuthenticatedHttpRequest
from issuers import selectors as issuer_selectors
from issuers.models import Organization
from issuers.roles import Principal, principal

View = Callable[..., HttpResponse]


def home_url(who: Principal) -> str:
    """Where a user's portal starts."""
    if who.is_agency:
        return reverse("portal:agency")
    if who.bank_ids:
        bank = Organization.objects.filter(pk__in=who.bank_ids).order_by("name").first()
        if bank is not None:
            return reverse("portal:bank", args=[bank.slug])
    if who.is_regulator:
        return reverse("portal:regulator")
    if who.is_citizen:
        return reverse("portal:my-card")
    return reverse("portal:home")


def citizen_required(view: View) -> View:
    @login_required
    @wraps(view)
    def wrapper(request: AuthenticatedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not principal(request.user).is_citizen:
            raise PermissionDenied("these pages are for card holders")
        return view(request, *args, **kwargs)

    return wrapper


def agency_required(view: View) -> View:
    @login_required
    @wraps(view)
    def wrapper(request: AuthenticatedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not principal(request.user).is_agency:
            raise PermissionDenied("these pages are for the agency")
        return view(request, *args, **kwargs)

    return wrapper


def regulator_required(view: View) -> View:
    @login_required
    @wraps(view)
    def wrapper(request: AuthenticatedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        who = principal(request.user)
        if not (who.is_regulator or who.is_agency):
            raise PermissionDenied("these pages are for regulators")
        return view(request, *args, **kwargs)

    return wrapper


def bank_member(view: View) -> View:
    """Resolve ``<slug:bank>`` to one of the user's own banks, or 404 (another bank's pages do not
    exist for this user). The view receives the Organization."""

    @login_required
    @wraps(view)
    def wrapper(request: AuthenticatedHttpRequest, bank: str, *args: Any, **kwargs: Any) -> HttpResponse:
        who = principal(request.user)
        organization = (
            issuer_selectors.organizations_for(request.user)
            .filter(slug=bank, kind=Organization.Kind.BANK, pk__in=who.bank_ids)
            .first()
        )
        if organization is None:
            raise Http404("no such bank")
        return view(request, organization, *args, **kwargs)

    return wrapper


def require_operator(request: HttpRequest, organization: Organization) -> None:
    """Writes need an admin or operator of the organisation; auditors only read."""
    if not principal(request.user).can_operate(organization.pk):
        raise PermissionDenied("your role in this organisation is read-only")
