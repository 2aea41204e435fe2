"""Regulator reports and "a card at time T", built from the transparency log's entries alone.

Nothing here reads the platform's current tables (cards, security domains, jobs): every number
and every state comes from sequenced :class:`audit.models.AuditEntry` rows, so what a regulator
sees is what the signed log says, and each fact links to the entries (and their inclusion
proofs) it rests on. Only the agency and regulators read these (:func:`can_read_reports`); for
everyone else they do not exist (404).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from django import forms
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet

from audit.models import AuditEntry
from audit.selectors import catch_up
from ecard.principals import principal
from gp import aids

User = AbstractBaseUser | AnonymousUser

# Card life cycle actions (GP 2.3.1 §5.1.1): people's decisions (blocked, unblocked, replaced) and
# what the card then proved through its ISD (locked, unlocked, terminated), counted apart so a card
# blocked and then locked counts once in each row (docs/card-lifecycle.md).
CARD_BLOCKED = ("card.blocked",)
CARD_LOCKED = ("card.locked",)
CARD_UNBLOCKED = ("card.unblocked",)
CARD_UNLOCKED = ("card.unlocked",)
CARD_REPLACED = ("card.replaced",)
CARD_TERMINATED = ("card.terminated",)
CARD_LIFECYCLE_ACTIONS = CARD_BLOCKED + CARD_LOCKED + CARD_UNBLOCKED + CARD_UNLOCKED + CARD_REPLACED + CARD_TERMINATED
CARD_NOT_LIFECYCLE = ("card.issued", "card.holder_assigned")
_CARD_LIFECYCLE_AFTER = {
    **dict.fromkeys(CARD_BLOCKED + CARD_LOCKED, "CARD_LOCKED"),
    **dict.fromkeys(CARD_UNBLOCKED + CARD_UNLOCKED, "SECURED"),
    **dict.fromkeys(CARD_REPLACED + CARD_TERMINATED, "TERMINATED"),
}

ENROLL, REMOVE, ROTATE, LOCK, UNLOCK, UPDATE = (
    "enroll_bank",
    "remove_bank",
    "rotate_keys",
    "lock_sd",
    "unlock_sd",
    "update_applet",
)
ISD_AID = aids.ISD_AID.hex().upper()  # for entries older than card.issued's "isd_aid"


def can_read_reports(user: User | None) -> bool:
    who = principal(user)
    return who.is_agency or who.is_regulator


def sequenced_entries() -> QuerySet[AuditEntry]:
    """Every sequenced entry (pending ones are sequenced first)."""
    catch_up()
    return AuditEntry.objects.filter(index__isnull=False)


# --------------------------------------------------------------------------- period and bank


def last_month(today: dt.date) -> tuple[dt.date, dt.date]:
    """First and last day of the calendar month before ``today``'s."""
    end = today.replace(day=1) - dt.timedelta(days=1)
    return end.replace(day=1), end


MAX_PERIOD_DAYS = 3700  # about ten years: a report is a scan of the period's entries


class ReportForm(forms.Form):
    date_from = forms.DateField(label="From (first day, YYYY-MM-DD)", required=False)
    date_to = forms.DateField(label="To (last day, included, YYYY-MM-DD)", required=False)
    bank = forms.ChoiceField(label="Bank", required=False)

    def __init__(self, data: Any = None, *, today: dt.date, banks: Iterable[tuple[str, str]]) -> None:
        """``banks``: (slug, name) of the banks a report may be narrowed to (the caller's selector)."""
        super().__init__(data)
        self.today = today
        cast(forms.ChoiceField, self.fields["bank"]).choices = [("", "All banks"), *banks]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = last_month(self.today)
        start = data.get("date_from") or start
        end = data.get("date_to") or end
        if self.errors:
            return data
        if end < start:
            self.add_error("date_to", "The last day is before the first day.")
        elif (end - start).days > MAX_PERIOD_DAYS:
            self.add_error("date_to", f"A report covers at most {MAX_PERIOD_DAYS} days.")
        elif end >= dt.date.max - dt.timedelta(days=1):
            self.add_error("date_to", "Enter a date before year 9999.")
        data["date_from"], data["date_to"] = start, end
        return data

    def period(self) -> Period:
        data = self.cleaned_data
        return Period(data["date_from"], data["date_to"], data.get("bank") or "")


@dataclass(frozen=True)
class Period:
    """Days ``first`` .. ``last`` (both included, UTC) and an optional bank (slug)."""

    first: dt.date
    last: dt.date
    bank: str = ""

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.first, dt.time.min, tzinfo=dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)

    def entries(self, *, by_bank: bool = True) -> QuerySet[AuditEntry]:
        entries = sequenced_entries().filter(time__gte=self.start, time__lt=self.end)
        if by_bank and self.bank:
            entries = entries.filter(organization_slug=self.bank)
        return entries


# --------------------------------------------------------------------------- reports


@dataclass
class Report:
    slug: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    chart: list[tuple[str, int]]
    note: str = ""

    @property
    def total(self) -> int:
        return sum(value for _label, value in self.chart)


def _count(entries: QuerySet[AuditEntry], action: str, **details: Any) -> int:
    entries = entries.filter(action=action)
    for key, value in details.items():
        entries = entries.filter(**{f"details__{key}": value})
    return entries.count()


def activity_report(period: Period) -> Report:
    entries = period.entries()
    issued = period.entries(by_bank=False).filter(action="card.issued", outcome=AuditEntry.Outcome.SUCCESS).count()
    rows: list[list[Any]] = [
        ["Cards issued", issued],
        ["Enrollments requested", _count(entries, "enrollment.requested")],
        ["Enrollments completed", _count(entries, "job.done", kind=ENROLL)],
        ["Enrollments failed", _count(entries, "job.failed", kind=ENROLL)],
        ["Removals requested", _count(entries, "enrollment.removal_requested")],
        ["Removals completed", _count(entries, "job.done", kind=REMOVE)],
    ]
    return Report(
        "activity",
        "Cards issued, enrollments and removals",
        ["What", "Count"],
        rows,
        [(str(label), int(value)) for label, value in rows],
        note="Cards are issued by the agency: their count ignores the bank filter." if period.bank else "",
    )


def updates_report(period: Period) -> Report:
    """Per release: cards it was installed on at enrollment and cards it was updated on, from the
    ``packages`` of ``job.done`` entries."""
    counts: dict[tuple[str, str, str, int, str], Counter[str]] = defaultdict(Counter)
    done = period.entries().filter(action="job.done", details__kind__in=[ENROLL, UPDATE])
    for bank, details in done.values_list("organization_slug", "details").iterator():
        kind = details.get("kind")
        for package in details.get("packages") or []:
            key = (
                bank,
                str(package.get("package_aid", "")),
                str(package.get("version", "")),
                int(package.get("release") or 0),
                str(package.get("load_file_hash", "")),
            )
            counts[key]["installed" if kind == ENROLL else "updated"] += 1
    rows: list[list[Any]] = [
        [release, bank, aid, version, lfdb, c["installed"], c["updated"]]
        for (bank, aid, version, release, lfdb), c in sorted(counts.items())
    ]
    return Report(
        "updates",
        "Updates by release",
        ["Release", "Bank", "Package AID", "Version", "Load file hash (SHA-256)", "Installed at enrollment", "Updated"],
        rows,
        [(f"{aid} v{version} ({bank})", inst + upd) for _r, bank, aid, version, _h, inst, upd in rows],
    )


def _by_reason(entries: QuerySet[AuditEntry]) -> list[tuple[str, int]]:
    counts = Counter(entries.values_list("reason", flat=True).iterator())
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def refusals_report(period: Period) -> Report:
    reasons = _by_reason(period.entries().filter(action="token.denied"))
    return Report(
        "refusals",
        "Token refusals and their reasons",
        ["Reason", "Refusals"],
        [[reason or "(none given)", n] for reason, n in reasons],
        [(reason or "(none given)", n) for reason, n in reasons],
    )


def failures_report(period: Period) -> Report:
    rows: list[list[Any]] = []
    failed = period.entries().filter(action="job.failed")
    kinds = Counter(failed.values_list("details__kind", flat=True).iterator())
    for kind in sorted(kinds, key=str):
        for reason, m in _by_reason(failed.filter(details__kind=kind)):
            rows.append(["Failed job", str(kind or ""), reason, m])
    chart = [(f"Failed jobs: {kind}", n) for kind, n in sorted(kinds.items(), key=lambda item: str(item[0]))]
    note = ""
    if period.bank:
        note = "Rejected sessions concern a card and its reader, not a bank: they are counted without a bank filter."
    else:
        rejected = _by_reason(period.entries().filter(action="session.rejected"))
        rows += [["Rejected session", "", reason, n] for reason, n in rejected]
        chart.append(("Rejected sessions", sum(n for _r, n in rejected)))
    return Report(
        "failures", "Failed jobs and rejected sessions", ["What", "Job kind", "Reason", "Count"], rows, chart, note=note
    )


def lifecycle_report(period: Period) -> Report:
    entries = period.entries(by_bank=False).filter(action__startswith="card.").exclude(action__in=CARD_NOT_LIFECYCLE)
    counts = Counter(entries.values_list("action", flat=True).iterator())
    rows: list[list[Any]] = [
        ["Cards blocked", sum(counts[a] for a in CARD_BLOCKED)],
        ["Cards locked on the card", sum(counts[a] for a in CARD_LOCKED)],
        ["Cards unblocked", sum(counts[a] for a in CARD_UNBLOCKED)],
        ["Cards unlocked on the card", sum(counts[a] for a in CARD_UNLOCKED)],
        ["Cards replaced", sum(counts[a] for a in CARD_REPLACED)],
        ["Cards terminated", sum(counts[a] for a in CARD_TERMINATED)],
    ]
    rows += [[f"Other: {a}", n] for a, n in sorted(counts.items()) if a not in CARD_LIFECYCLE_ACTIONS]
    return Report(
        "lifecycle",
        "Blocked and replaced cards",
        ["What", "Count"],
        rows,
        [(str(label), int(n)) for label, n in rows],
        note="The card life cycle (blocking, replacement) is not built yet: these count its log entries once "
        "they exist. Card life cycle changes are the agency's: this report ignores the bank filter.",
    )


REPORTS = {
    "activity": activity_report,
    "updates": updates_report,
    "refusals": refusals_report,
    "failures": failures_report,
    "lifecycle": lifecycle_report,
}


def all_reports(period: Period) -> list[Report]:
    return [build(period) for build in REPORTS.values()]


# --------------------------------------------------------------------------- CSV

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting with = + - @ (or a tab or CR) gets a leading
    quote (OWASP "CSV injection"); numbers stay numbers."""
    if isinstance(value, bool | int):
        return value
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def report_csv(report: Report, period: Period) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["Period from", "Period to", "Bank", *report.columns])
    prefix = [period.first.isoformat(), period.last.isoformat(), period.bank or "all"]
    for row in report.rows:
        writer.writerow([csv_cell(c) for c in (*prefix, *row)])
    return out.getvalue()


# --------------------------------------------------------------------------- a card at time T


@dataclass
class PackageAt:
    aid: str
    version: str
    release: int | None
    load_file_hash: str


@dataclass
class AppletAt:
    instance_aid: str
    package_aid: str
    version: str


@dataclass
class DomainAt:
    aid: str
    organization: str
    state: str
    lifecycle: str = ""
    key_version: int | None = None
    algorithm: str = ""
    is_isd: bool = False
    packages: dict[str, PackageAt] = field(default_factory=dict)
    applets: dict[str, AppletAt] = field(default_factory=dict)
    entries: list[int] = field(default_factory=list)

    @property
    def package_list(self) -> list[PackageAt]:
        return sorted(self.packages.values(), key=lambda p: p.aid)

    @property
    def applet_list(self) -> list[AppletAt]:
        return sorted(self.applets.values(), key=lambda a: a.instance_aid)


@dataclass
class CardAt:
    """The card as the log says it was at ``at``: issued or not, its life cycle, its security
    domains with their packages and applets, and the entries each fact rests on."""

    cin: str
    at: dt.datetime
    issued: bool = False
    issued_by: str = ""
    lifecycle: str = ""
    domains: dict[str, DomainAt] = field(default_factory=dict)
    entries: list[AuditEntry] = field(default_factory=list)  # every entry replayed, in log order
    lifecycle_entries: list[int] = field(default_factory=list)

    @property
    def domain_list(self) -> list[DomainAt]:
        return sorted(self.domains.values(), key=lambda d: (not d.is_isd, d.aid))

    def domain(self, aid: str) -> DomainAt | None:
        return self.domains.get(aid.upper())


def card_in_log(cin: str) -> bool:
    return sequenced_entries().filter(card_cin=cin).exists()


def card_at(cin: str, at: dt.datetime) -> CardAt:
    """Replay the card's entries (``card_cin``), in log order, up to ``at`` (included)."""
    entries = sequenced_entries().filter(card_cin=cin, time__lte=at).order_by("index")
    return replay(cin, at, entries.iterator())


def replay(cin: str, at: dt.datetime, entries: Iterable[AuditEntry]) -> CardAt:
    card = CardAt(cin=cin, at=at)
    job_domains: dict[str, str] = {}  # job id -> SD AID, from job.queued (older job.done entries lack it)

    def domain(aid: str, org: str = "") -> DomainAt:
        aid = aid.upper()
        if aid not in card.domains:
            card.domains[aid] = DomainAt(aid=aid, organization=org, state="pending")
        sd = card.domains[aid]
        if org and not sd.organization:
            sd.organization = org
        return sd

    def bank_domain(bank: str) -> DomainAt | None:
        live = [d for d in card.domains.values() if d.organization == bank and not d.is_isd and d.state != "removed"]
        return live[-1] if live else None

    for entry in entries:
        details = entry.details or {}
        action, org, index = entry.action, entry.organization_slug, entry.index
        if index is None:  # not sequenced yet: not part of the log a regulator can check
            continue
        used = True
        if action == "card.issued" and entry.outcome == AuditEntry.Outcome.SUCCESS:
            card.issued, card.issued_by = True, org
            card.lifecycle = str(details.get("lifecycle") or "SECURED")
            card.lifecycle_entries.append(index)
            isd = domain(str(details.get("isd_aid") or ISD_AID), org)
            isd.is_isd, isd.state, isd.lifecycle = True, "active", "PERSONALIZED"
            isd.entries.append(index)
        elif action in CARD_LIFECYCLE_ACTIONS and entry.outcome == AuditEntry.Outcome.SUCCESS:
            card.lifecycle = str(details.get("lifecycle") or _CARD_LIFECYCLE_AFTER[action])
            card.lifecycle_entries.append(index)
        elif action == "enrollment.requested" and details.get("ssd_aid"):
            sd = domain(str(details["ssd_aid"]), org)
            sd.state, sd.packages, sd.applets = "pending", {}, {}
            sd.entries.append(index)
        elif action == "enrollment.removal_requested":
            removing = domain(str(details["ssd_aid"]), org) if details.get("ssd_aid") else bank_domain(org)
            if removing is not None:
                removing.state = "removing"
                removing.entries.append(index)
        elif action == "job.queued":
            if details.get("security_domain"):
                job_domains[entry.subject_id] = str(details["security_domain"]).upper()
            used = False
        elif action in ("job.done", "job.failed"):
            aid = str(details.get("sd_aid") or job_domains.get(entry.subject_id, ""))
            used = bool(aid) and _apply_job(domain(aid, org), action, details, index)
        elif action.startswith("receipt.") and details.get("sd_aid"):
            domain(str(details["sd_aid"]), org).entries.append(index)
        else:
            used = False
        if used:
            card.entries.append(entry)
    return card


def _apply_job(sd: DomainAt, action: str, details: dict[str, Any], index: int) -> bool:
    kind = details.get("kind")
    if action == "job.failed":
        if kind != ENROLL:
            return False
        sd.state = "failed"
        sd.entries.append(index)
        return True
    if kind == ENROLL:
        sd.state = "active"
        sd.lifecycle = str(details.get("lifecycle") or "PERSONALIZED")
    elif kind == REMOVE:
        sd.state, sd.packages, sd.applets = "removed", {}, {}
    elif kind in (LOCK, UNLOCK):
        sd.lifecycle = str(details.get("lifecycle") or ("LOCKED" if kind == LOCK else "PERSONALIZED"))
    elif kind not in (ROTATE, UPDATE):
        return False
    if "key_version" in details:
        sd.key_version = details["key_version"]
        sd.algorithm = str(details.get("algorithm") or "")
    for aid in details.get("removed_packages") or []:
        aid = str(aid).upper()
        sd.packages.pop(aid, None)
        sd.applets = {k: a for k, a in sd.applets.items() if a.package_aid != aid}
    for package in details.get("packages") or []:
        aid = str(package.get("package_aid", "")).upper()
        version = str(package.get("version", ""))
        sd.packages[aid] = PackageAt(aid, version, package.get("release"), str(package.get("load_file_hash", "")))
        for instance in package.get("instances") or []:
            sd.applets[str(instance).upper()] = AppletAt(str(instance).upper(), aid, version)
        for applet in sd.applets.values():
            if applet.package_aid == aid:
                applet.version = version
    sd.entries.append(index)
    return True


class CardAtForm(forms.Form):
    cin = forms.RegexField(
        label="Card (CIN)",
        regex=r"^[0-9A-Fa-f]{2,32}$",
        max_length=32,
        error_messages={"invalid": "Enter the card's CIN: 1 to 16 bytes of hex."},
    )
    at = forms.DateTimeField(
        label="Moment (ISO 8601, UTC)",
        required=False,
        help_text="For example 2026-11-30T14:00:00Z. Empty: now.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )

    def clean_cin(self) -> str:
        return self.cleaned_data["cin"].upper()

    def clean_at(self) -> dt.datetime | None:
        at = self.cleaned_data.get("at")
        if at is None:
            return None
        try:
            return at.astimezone(dt.UTC)
        except (OverflowError, ValueError):
            raise forms.ValidationError("Enter a moment within years 1 to 9999 (UTC).") from None
