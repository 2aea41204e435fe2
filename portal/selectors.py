"""Reads of the portal pages, composed from the apps' scoped selectors (never a wider query)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet

from audit import selectors as audit_selectors
from audit.models import AuditEntry
from cards import selectors as card_selectors
from cards.models import Card, CardJob, Enrollment, SecurityDomain
from issuers import selectors as issuer_selectors
from issuers.custody_models import KeySet
from issuers.models import Organization
from issuers.roles import principal
from updates.models import CardSession, Release

# Metadata shown of a key set: never the wrapped material.
KEYSET_FIELDS = (
    "id",
    "card_cin",
    "sd_aid",
    "kvn",
    "purpose",
    "algorithm",
    "key_length",
    "kcv_enc",
    "kcv_mac",
    "kcv_dek",
    "state",
    "created_at",
    "rotated_at",
)


@dataclass
class CardOverview:
    card: Card
    security_domains: list[SecurityDomain]
    enrollments: list[Enrollment]
    pending: list[CardJob]
    recent: list[CardJob]
    progress: dict[str, Any] = field(default_factory=dict)


def my_cards(user: User) -> QuerySet[Card]:
    return card_selectors.cards_for(user)


def session_progress(card: Card) -> dict[str, Any]:
    """The engine's progress of the card's open relay session, if one is running."""
    session = CardSession.objects.filter(card=card, state=CardSession.State.OPEN).order_by("-updated_at").first()
    if session is None:
        return {}
    state = session.engine_state or {}
    jobs, finished = state.get("jobs", []), state.get("finished", [])
    return {"jobs_total": len(jobs) + len(finished), "jobs_finished": len(finished), "phase": state.get("phase")}


def card_overview(user: User, card: Card) -> CardOverview:
    sds = (
        card_selectors.security_domains_for(user)
        .filter(card=card)
        .exclude(state=SecurityDomain.State.REMOVED)
        .prefetch_related("applets")
    )
    enrollments = card_selectors.enrollments_for(user).filter(card=card, status__in=Enrollment.OPEN_STATUSES)
    jobs = card_selectors.jobs_for(user).filter(card=card)
    pending = list(jobs.filter(state__in=CardJob.OPEN_STATES).order_by("created_at", "id"))
    recent = list(jobs.exclude(state__in=CardJob.OPEN_STATES).order_by("-finished_at", "-id")[:10])
    return CardOverview(
        card=card,
        security_domains=list(sds),
        enrollments=list(enrollments),
        pending=pending,
        recent=recent,
        progress=session_progress(card),
    )


def enrollable_banks(user: User, card: Card) -> list[Organization]:
    """Active banks ready for enrollment (with an SSD template) not already on the card."""
    taken = card.enrollments.filter(status__in=Enrollment.OPEN_STATUSES).values("bank_id")
    return list(
        issuer_selectors.organizations_for(user)
        .filter(kind=Organization.Kind.BANK, is_active=True, ssd_template__isnull=False)
        .exclude(pk__in=taken)
        .order_by("name")
    )


# -- bank ------------------------------------------------------------------------------------


@dataclass
class Bar:
    label: str
    value: int


def bank_dashboard(user: User, bank: Organization) -> dict[str, Any]:
    sds = card_selectors.security_domains_for(user).filter(organization=bank)
    active_sds = sds.filter(state=SecurityDomain.State.ACTIVE)
    applets = card_selectors.applets_for(user).filter(
        security_domain__organization=bank, security_domain__state=SecurityDomain.State.ACTIVE
    )
    by_version = (
        applets.values("package_aid", "package_version")
        .annotate(n=Count("id"))
        .order_by("package_aid", "package_version")
    )
    jobs = card_selectors.jobs_for(user).filter(organization=bank)
    return {
        "cards": card_selectors.cards_for(user).filter(security_domains__in=active_sds).distinct().count(),
        "sds_active": active_sds.count(),
        "sds_pending": sds.filter(state=SecurityDomain.State.PENDING).count(),
        "jobs_open": jobs.filter(state__in=CardJob.OPEN_STATES).count(),
        "jobs_failed": jobs.filter(state=CardJob.State.FAILED).count(),
        "bars": [Bar(f"{row['package_aid']} v{row['package_version']}", row["n"]) for row in by_version],
        "recent_failures": list(jobs.filter(state=CardJob.State.FAILED).order_by("-finished_at", "-id")[:10]),
    }


def bank_security_domains(user: User, bank: Organization) -> QuerySet[SecurityDomain]:
    return (
        card_selectors.security_domains_for(user)
        .filter(organization=bank)
        .exclude(state=SecurityDomain.State.REMOVED)
        .order_by("card__cin")
    )


def bank_key_sets(user: User, bank: Organization) -> QuerySet[KeySet]:
    """Key set metadata (KVN, algorithm, KCVs, dates) of the bank's own custody; never the material."""
    if bank.pk not in principal(user).bank_ids:
        return KeySet.objects.none()
    return KeySet.objects.filter(organization=bank).only(*KEYSET_FIELDS).order_by("-state", "card_cin", "kvn", "id")


def bank_releases(user: User, bank: Organization) -> QuerySet[Release]:
    who = principal(user)
    if bank.pk not in who.bank_ids and not (who.is_agency or who.is_regulator):
        return Release.objects.none()
    return Release.objects.filter(bank=bank).defer("cap_file").order_by("-created_at", "-id")


# -- agency ----------------------------------------------------------------------------------


def card_lookup(user: User, query: str) -> QuerySet[Card]:
    cards = card_selectors.cards_for(user).order_by("-created_at", "cin")
    query = query.strip()
    if query:
        cards = cards.filter(
            Q(cin__iexact=query)
            | Q(serial__iexact=query)
            | Q(holder__username__iexact=query)
            | Q(cin__istartswith=query)
        )
    return cards


def log_entries_for(user: User) -> QuerySet[AuditEntry]:
    """The audit log entries ``user`` may read (a citizen: those of the cards they hold)."""
    return audit_selectors.entries_for(user, card_cins=card_selectors.card_cins_held_by(user.pk))


def token_denials(user: User, limit: int = 20) -> list[AuditEntry]:
    return list(log_entries_for(user).filter(action="token.denied").order_by("-index")[:limit])
