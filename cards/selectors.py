"""Read operations of the cards app, scoped to what the caller may see.

Rules (the API and the portal share them):
- the agency and regulators see every card, security domain, applet, enrollment and job;
- a bank sees only its own security domains, their applets, enrollments and jobs, and of a
  card only the cards that carry one of its security domains (never the holder);
- a citizen sees their own cards and everything on them;
- anyone else sees nothing.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from cards.models import AppletInstance, Card, CardJob, CardPackage, Enrollment, ManufacturerBatch, SecurityDomain
from issuers.models import Organization
from issuers.roles import principal


def cards_for(user: User) -> QuerySet[Card]:
    who = principal(user)
    if not who.is_authenticated:
        return Card.objects.none()
    cards = Card.objects.select_related("holder", "issued_by")
    if who.is_agency or who.is_regulator:
        return cards.all()
    if who.bank_ids:
        return cards.filter(security_domains__organization_id__in=who.bank_ids).distinct()
    if who.is_citizen:
        return cards.filter(holder_id=who.user_id)
    return Card.objects.none()


def card_cins_held_by(user_id: int | None) -> QuerySet[Card, str]:
    """The CINs of the cards a user holds (what the audit log shows a citizen)."""
    if user_id is None:
        return Card.objects.none().values_list("cin", flat=True)
    return Card.objects.filter(holder_id=user_id).values_list("cin", flat=True)


def security_domains_for(user: User) -> QuerySet[SecurityDomain]:
    who = principal(user)
    if not who.is_authenticated:
        return SecurityDomain.objects.none()
    sds = SecurityDomain.objects.select_related("card", "organization")
    if who.is_agency or who.is_regulator:
        return sds.all()
    if who.bank_ids:
        return sds.filter(organization_id__in=who.bank_ids)
    if who.is_citizen:
        return sds.filter(card__holder_id=who.user_id)
    return SecurityDomain.objects.none()


def applets_for(user: User) -> QuerySet[AppletInstance]:
    return AppletInstance.objects.filter(security_domain__in=security_domains_for(user)).select_related(
        "security_domain", "security_domain__card"
    )


def packages_for(user: User) -> QuerySet[CardPackage]:
    return CardPackage.objects.filter(security_domain__in=security_domains_for(user)).select_related(
        "security_domain", "security_domain__card"
    )


def enrollments_for(user: User) -> QuerySet[Enrollment]:
    who = principal(user)
    if not who.is_authenticated:
        return Enrollment.objects.none()
    enrollments = Enrollment.objects.select_related("card", "bank", "security_domain")
    if who.is_agency or who.is_regulator:
        return enrollments.all()
    if who.bank_ids:
        return enrollments.filter(bank_id__in=who.bank_ids)
    if who.is_citizen:
        return enrollments.filter(card__holder_id=who.user_id)
    return Enrollment.objects.none()


def jobs_for(user: User) -> QuerySet[CardJob]:
    who = principal(user)
    if not who.is_authenticated:
        return CardJob.objects.none()
    jobs = CardJob.objects.select_related("card", "organization", "security_domain")
    if who.is_agency or who.is_regulator:
        return jobs.all()
    if who.bank_ids:
        return jobs.filter(organization_id__in=who.bank_ids)
    if who.is_citizen:
        return jobs.filter(card__holder_id=who.user_id)
    return CardJob.objects.none()


def pending_jobs(card: Card) -> QuerySet[CardJob]:
    """The card's open work, in the order it will run."""
    return card.jobs.filter(state__in=CardJob.OPEN_STATES).order_by("created_at", "id")


# The mark updates.ota.hold_job leaves on a job whose bank's key service could not be reached.
KEY_SERVICE_HELD = "key service is unavailable"


def jobs_held_for_key_service(bank_id: int) -> QuerySet[CardJob]:
    """The bank's jobs waiting because its key service was down at the card's last presentation
    (pending, uncharged; they run at the next presentation once the service answers)."""
    return (
        CardJob.objects.filter(
            organization_id=bank_id, state=CardJob.State.PENDING, last_error__contains=KEY_SERVICE_HELD
        )
        .select_related("card")
        .order_by("-pk")
    )


def manufacturer_batches_for(user: User) -> QuerySet[ManufacturerBatch]:
    """Imported manufacturer files: the agency's own, and every one for regulators; nobody else."""
    who = principal(user)
    batches = ManufacturerBatch.objects.select_related("agency", "imported_by")
    if who.is_regulator:
        return batches.all()
    if who.is_agency:
        return batches.filter(agency_id__in=who.org_ids(Organization.Kind.AGENCY))
    return ManufacturerBatch.objects.none()
