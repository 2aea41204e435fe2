"""A card's history in words (issue 19): the transparency log's entries about the card, as the
sentences its holder reads on the card page ("Alpha Bank's wallet updated to 2.0", "Beta Bank
joined your card", "Your card was blocked"), with versions where the entry records them.

:func:`entries` gives the entries a user may read about the card, newest first, without the
engine's bookkeeping (attempts, receipts, sessions); :func:`in_words` turns a page of them into
:class:`Line` values. An action without its own sentence still reads as words, never as a code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet

from audit.models import AuditEntry
from audit.selectors import entries_for
from cards.models import Card
from cards.selectors import card_cins_held_by
from issuers.models import Organization, SsdTemplate

# The engine's bookkeeping: true, logged, and of no use to the holder reading their card's story.
BOOKKEEPING = ("job.queued", "job.attempt", "job.attempt_failed", "job.held", "session.done", "rollout.card_result")
BOOKKEEPING_PREFIXES = ("receipt.", "repair.jobs_")
# Work whose outcome the card's own entry tells, in better words (card.locked, card.renewed, ...):
# its job.done would say the same thing twice.
TOLD_BY_THE_CARD = ("card_status", "renew_card")


@dataclass(frozen=True)
class Line:
    time: dt.datetime
    text: str
    outcome: str  # the entry's: success, failure, denied, pending
    index: int | None


def entries(user: User, card: Card) -> QuerySet[AuditEntry]:
    """The log entries about ``card`` that ``user`` may read, newest first, bookkeeping left out."""
    found = (
        entries_for(user, card_cins=card_cins_held_by(user.pk))
        .filter(card_cin=card.cin)
        .exclude(action__in=BOOKKEEPING)
    )
    for prefix in BOOKKEEPING_PREFIXES:
        found = found.exclude(action__startswith=prefix)
    return found.exclude(action="job.done", details__kind__in=TOLD_BY_THE_CARD).order_by("-index")


@dataclass(frozen=True)
class _Names:
    organizations: dict[str, str]
    applications: dict[tuple[str, str], str]  # (bank slug, package AID) -> the name its template gives

    def org(self, slug: str, fallback: str = "the agency") -> str:
        return self.organizations.get(slug, fallback) if slug else fallback

    def application(self, slug: str, package_aid: str) -> str:
        return self.applications.get((slug, package_aid.upper()), "application")


def _names(rows: Sequence[AuditEntry]) -> _Names:
    slugs = {row.organization_slug for row in rows if row.organization_slug}
    organizations = dict(Organization.objects.filter(slug__in=slugs).values_list("slug", "name"))
    applications: dict[tuple[str, str], str] = {}
    for slug, default_applets in SsdTemplate.objects.filter(organization__slug__in=slugs).values_list(
        "organization__slug", "default_applets"
    ):
        for applet in default_applets or []:
            if applet.get("name") and applet.get("package_aid"):
                applications[(slug, str(applet["package_aid"]).upper())] = str(applet["name"])
    return _Names(organizations, applications)


def in_words(rows: Iterable[AuditEntry]) -> list[Line]:
    """Each entry as a sentence (one query for the organisations' names on the page, one for their
    applications' names)."""
    rows = list(rows)
    names = _names(rows)
    return [Line(row.time, sentence(row, names), row.outcome, row.index) for row in rows]


# ------------------------------------------------------------------------------------------- sentences


def _version(details: dict[str, Any]) -> str:
    versions = sorted({str(p.get("version")) for p in details.get("packages") or [] if p.get("version")})
    return ", ".join(versions)


def _applications(slug: str, details: dict[str, Any], names: _Names) -> str:
    """ "Alpha Bank's wallet 2.0" (its packages, with versions)."""
    parts = []
    for package in details.get("packages") or []:
        name = names.application(slug, str(package.get("package_aid", "")))
        version = package.get("version")
        parts.append(f"{name} {version}" if version else name)
    return ", ".join(parts)


def _job_done(row: AuditEntry, names: _Names) -> str:
    details = row.details or {}
    slug = row.organization_slug
    bank = names.org(slug)
    kind = details.get("kind", "")
    if kind == "enroll_bank":
        installed = _applications(slug, details, names)
        return f"{bank} joined your card" + (f", with its {installed}" if installed else "")
    if kind == "remove_bank":
        return f"{bank} left your card"
    if kind == "rotate_keys":
        kvn = details.get("key_version")
        return f"{bank}'s keys on your card were renewed" + (f" (key set {kvn:02X})" if isinstance(kvn, int) else "")
    if kind == "lock_sd":
        return f"{bank} was locked on your card"
    if kind == "unlock_sd":
        return f"{bank} was unlocked on your card"
    if kind == "update_applet":
        packages = details.get("packages") or []
        removed = details.get("removed_packages") or []
        if packages:
            parts = [
                f"{bank}'s {names.application(slug, str(p.get('package_aid', '')))} updated to {p.get('version')}"
                for p in packages
            ]
            return "; ".join(parts)
        if removed:
            return f"{bank} removed {len(removed)} application{'s' if len(removed) > 1 else ''} from your card"
        return f"{bank}'s applications on your card were updated"
    if kind == "personalize":
        return f"{bank} delivered its data to your card"
    if kind == "card_status":
        lifecycle = details.get("lifecycle", "")
        return {
            "CARD_LOCKED": "Your card was locked",
            "TERMINATED": "Your card was switched off for good",
            "SECURED": "Your card was unlocked",
        }.get(lifecycle, "Your card's status was changed")
    if kind == "renew_card":
        until = details.get("valid_until")
        return "Your card was renewed" + (f", valid until {until}" if until else "")
    if kind == "survey_card":
        return "The agency read your card's content to check it"
    if kind == "repair_isd":
        return "The agency removed content nobody had installed from your card"
    return f"Work by {bank} on your card was done"


FAILED_WORK = {
    "enroll_bank": "Adding {bank} to your card",
    "remove_bank": "Removing {bank} from your card",
    "rotate_keys": "Renewing {bank}'s keys on your card",
    "lock_sd": "Locking {bank} on your card",
    "unlock_sd": "Unlocking {bank} on your card",
    "update_applet": "Updating {bank}'s applications on your card",
    "personalize": "Delivering {bank}'s data to your card",
    "card_status": "Changing your card's status",
    "renew_card": "Renewing your card",
    "survey_card": "Checking your card's content",
    "repair_isd": "Removing unknown content from your card",
}


def _job_failed(row: AuditEntry, names: _Names) -> str:
    work = FAILED_WORK.get((row.details or {}).get("kind", ""), "Work by {bank} on your card")
    return work.format(bank=names.org(row.organization_slug)) + " failed"


def _planned(row: AuditEntry, names: _Names) -> str:
    steps = (row.details or {}).get("steps", 0)
    if not steps:
        return "The agency's check found your card in order"
    return f"The agency's check found {steps} thing{'s' if steps != 1 else ''} to put right on your card"


Sentence = Callable[[AuditEntry, _Names], str]

SENTENCES: dict[str, Sentence] = {
    "card.issued": lambda row, n: f"Your card was issued by {n.org(row.organization_slug)}",
    "card.holder_assigned": lambda row, n: "The card was registered to you",
    "card.blocked": lambda row, n: "Your card was blocked",
    "card.unblocked": lambda row, n: "Your card was unblocked",
    "card.locked": lambda row, n: "Your card was locked",
    "card.unlocked": lambda row, n: "Your card was unlocked",
    "card.replaced": lambda row, n: "Your card was replaced by a new one",
    "card.terminated": lambda row, n: "Your card was switched off for good",
    "card.renewed": lambda row, n: (
        "Your card was renewed"
        + (f", valid until {row.details['valid_until']}" if (row.details or {}).get("valid_until") else "")
    ),
    "card.isd_keys_rotated": lambda row, n: "The agency put fresh keys on your card",
    "card.renewal_requested": lambda row, n: "A renewal of your card was asked for",
    "enrollment.carried_over": lambda row, n: (
        f"{n.org(row.organization_slug, 'A bank')} moves to your new card"
        + (f" (from card {row.details['from_card']})" if (row.details or {}).get("from_card") else "")
    ),
    "enrollment.requested": lambda row, n: f"You asked to add {n.org(row.organization_slug)} to your card",
    "enrollment.removal_requested": lambda row, n: f"Removing {n.org(row.organization_slug)} from your card was asked",
    "enrollment.closed_by_bank": lambda row, n: f"{n.org(row.organization_slug)} closed your account with it",
    "personalization.submitted": lambda row, n: f"{n.org(row.organization_slug)} sent new data for your card",
    "job.done": _job_done,
    "job.failed": _job_failed,
    "token.denied": lambda row, n: f"The agency refused work by {n.org(row.organization_slug)} on your card",
    "session.rejected": lambda row, n: "A presentation of your card was stopped: the connection could not be trusted",
    "session.expired": lambda row, n: "A presentation of your card ended before it finished",
    "session.failed": lambda row, n: "A presentation of your card failed",
    "secure_channel.auth_failed": lambda row, n: (
        f"A reader failed to open {n.org(row.organization_slug)}'s part of your card"
    ),
    "secure_channel.card_cryptogram_invalid": lambda row, n: (
        f"Your card did not prove itself to {n.org(row.organization_slug)}"
    ),
    "secure_channel.stopped": lambda row, n: (
        f"Work by {n.org(row.organization_slug)} was stopped after failed connections, to protect your card"
    ),
    "secure_channel.reader_held": lambda row, n: "A reader was set aside after a failed connection",
    "secure_channel.failures_cleared": lambda row, n: (
        f"The failed connections to {n.org(row.organization_slug)} were cleared"
    ),
    "repair.started": lambda row, n: "The agency started a repair of your card",
    "repair.planned": _planned,
    "repair.executed": lambda row, n: "The agency approved the repair of your card",
    "repair.consent_given": lambda row, n: (
        f"{n.org(row.organization_slug)} agreed to the repair of its part of your card"
    ),
    "repair.consent_refused": lambda row, n: (
        f"{n.org(row.organization_slug)} declined the repair of its part of your card"
    ),
    "repair.done": lambda row, n: "The repair of your card is complete",
    "repair.failed": lambda row, n: "The repair of your card failed",
    "repair.cancelled": lambda row, n: "The repair of your card was cancelled",
}


def sentence(row: AuditEntry, names: _Names | None = None) -> str:
    """The entry in words; an action without a sentence of its own reads as its words
    ("widget.frobbed_twice" → "Widget: frobbed twice"), never as the code itself."""
    names = names or _names([row])
    words = SENTENCES.get(row.action)
    if words is not None:
        return words(row, names)
    subject, _, verb = row.action.partition(".")
    subject_words = subject.replace("_", " ").strip().capitalize() or "Your card"
    verb_words = verb.replace(".", " ").replace("_", " ").strip() or "recorded"
    by = f" ({names.org(row.organization_slug, '')})" if row.organization_slug in names.organizations else ""
    return f"{subject_words}: {verb_words}{by}"
