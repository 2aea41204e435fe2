"""Card validity (issue 19): the agency's policy, a new card's validity, expiry, and which cards
near their expiry.

A card is valid from ``Card.valid_from`` through ``Card.valid_until`` (both days included); the
card itself holds the same dates in its ISD (``5F25``/``5F24``, ``gp.validity``), written at
personalisation and by a renewal (``updates.renewal``). An expired card is refused new banks
(``cards.services.request_enrollment``) but can always be renewed.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.services import record_event
from cards import notify
from cards.models import Card, CitizenEmail, ValidityPolicy
from ecard.errors import ServiceError
from issuers.models import Organization
from issuers.roles import principal

MAX_YEARS = 20
MAX_RENEW_WITHIN_DAYS = 365


def today() -> dt.date:
    return timezone.localdate()


def add_years(day: dt.date, years: int) -> dt.date:
    """The same day ``years`` later; 29 February becomes 28 February in a year without it."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def policy_of(agency: Organization) -> ValidityPolicy:
    """The agency's validity policy; the defaults (5 years, renewal offered 90 days ahead) until set."""
    found = ValidityPolicy.objects.filter(agency=agency).first()
    return found if found is not None else ValidityPolicy(agency=agency)


@transaction.atomic
def set_policy(*, agency: Organization, years: int, renew_within_days: int, actor: User | None) -> ValidityPolicy:
    """Set how long cards (and renewals) are valid and how early a card nears its expiry. Audited.
    Cards already issued keep their dates; the new period applies to new cards and renewals."""
    if not agency.is_agency:
        raise ServiceError("only the agency sets the card validity policy", field="agency", code="forbidden")
    if actor is not None and not principal(actor).can_operate(agency.pk):
        raise ServiceError(f"only {agency.name}'s operators set its card validity", code="forbidden")
    if isinstance(years, bool) or not isinstance(years, int) or not 1 <= years <= MAX_YEARS:
        raise ServiceError(f"a card is valid 1 to {MAX_YEARS} years", field="years")
    if (
        isinstance(renew_within_days, bool)
        or not isinstance(renew_within_days, int)
        or not 1 <= renew_within_days <= MAX_RENEW_WITHIN_DAYS
    ):
        raise ServiceError(
            f"renewal is offered 1 to {MAX_RENEW_WITHIN_DAYS} days before expiry", field="renew_within_days"
        )
    policy = ValidityPolicy.objects.select_for_update().filter(agency=agency).first() or ValidityPolicy(agency=agency)
    previous = {"years": policy.years, "renew_within_days": policy.renew_within_days} if policy.pk else None
    policy.years = years
    policy.renew_within_days = renew_within_days
    policy.updated_by = actor if actor is not None and getattr(actor, "pk", None) else None
    policy.save()
    record_event(
        action="validity_policy.set",
        subject_type="organization",
        subject_id=agency.slug,
        actor=actor,
        actor_org=agency,
        organization=agency,
        details={"years": years, "renew_within_days": renew_within_days, "previous": previous},
    )
    return policy


def validity_for(agency: Organization, start: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The validity of a card issued (or renewed) on ``start`` (default today): from that day to
    the same day ``years`` later (the agency's policy), as the migration gave existing cards."""
    start = start or today()
    return start, add_years(start, policy_of(agency).years)


def is_expired(card: Card, on: dt.date | None = None) -> bool:
    """Past its last valid day (a card without recorded validity never expires)."""
    return card.valid_until is not None and (on or today()) > card.valid_until


def renewal_horizon(agency: Organization, on: dt.date | None = None) -> dt.date:
    """Cards valid until this day or earlier near their expiry."""
    return (on or today()) + dt.timedelta(days=policy_of(agency).renew_within_days)


def nears_expiry(card: Card, on: dt.date | None = None) -> bool:
    """Within the policy's renewal window, or expired already: renewal is offered."""
    return card.valid_until is not None and card.valid_until <= renewal_horizon(card.issued_by, on)


def cards_nearing_expiry(agency: Organization, on: dt.date | None = None) -> QuerySet[Card]:
    """The agency's live, usable cards whose validity ends within its renewal window (expired ones
    too): what a renewal campaign targets and who is warned."""
    return Card.objects.filter(
        Card.LIVE,
        Q(issued_by=agency),
        standing=Card.Standing.ACTIVE,
        valid_until__isnull=False,
        valid_until__lte=renewal_horizon(agency, on),
    )


def agency_of(user: User) -> Organization | None:
    """The agency the user is a member of (the platform has one), or None."""
    agency_ids = principal(user).org_ids(Organization.Kind.AGENCY)
    return Organization.objects.filter(pk__in=agency_ids).order_by("pk").first()


def warn_nearing_expiry(on: dt.date | None = None) -> int:
    """E-mail the holder of every card nearing its expiry (or expired, not yet renewed), once per
    card and expiry date (``cards.notify.email_holder``'s ``dedupe_key``): the periodic task's
    work. Returns how many e-mails went out."""
    sent = 0
    for agency in Organization.objects.filter(kind=Organization.Kind.AGENCY, is_active=True):
        cards = cards_nearing_expiry(agency, on).filter(holder__isnull=False).select_related("holder")
        for card in cards.iterator(chunk_size=500):
            until = card.valid_until.isoformat() if card.valid_until else ""
            expired = is_expired(card, on)
            subject = "Your card has expired" if expired else "Your card expires soon"
            body = (
                f"Your card {card.cin} {'expired' if expired else 'is valid until'} {until}. "
                "Renew it from your card page; it is renewed in place the next time you present it.\n"
            )
            with transaction.atomic():
                if notify.email_holder(
                    card, CitizenEmail.Kind.EXPIRY, subject, body, dedupe_key=f"expiry:{card.cin}:{until}"
                ):
                    sent += 1
    return sent
