"""A card's life after issue (issue 19): blocked when lost or stolen, unblocked, replaced.

Services (each one transaction with its audit entry, docs/card-lifecycle.md):

* :func:`block_card` — the holder (portal) or the agency (portal, API). The card's standing turns
  ``blocked`` at once: the platform refuses every token, job and session for it
  (``updates.presentation``, ``cards.services.refuse_unless_in_use``, ``updates.policy``), its
  open relay sessions are closed, and a ``card_status`` job waits to lock it (SET STATUS
  CARD_LOCKED by the ISD) wherever it is presented. Each enrolled bank gets a notice
  (``cards.bank_notices``), the holder an e-mail.
* :func:`unblock_card` — the agency only, with a reason. Work held while blocked runs again; a card
  the ISD proved CARD_LOCKED gets SET STATUS back to SECURED first.
* :func:`replace_card` — the agency only. A new card for the same holder
  (``cards.services.issue_card``); every enrollment of the old card is carried over as enroll jobs
  on the new one (the bank's SSD through its key service where it has one, the old card's applets
  at their releases), personalisation is asked of each bank again (their data is sealed to one
  card), and the old card is terminated: refused everywhere now, SET STATUS TERMINATED if it is
  ever presented.

Audit actions: ``card.blocked``, ``card.unblocked``, ``card.replaced`` (here), ``card.locked``,
``card.unlocked``, ``card.terminated`` (when the card proves it, ``updates.card_status``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.services import record_event
from cards.bank_notices import notify_bank
from cards.models import (
    AppletInstance,
    BankNotice,
    Card,
    CardJob,
    CardPackage,
    CitizenEmail,
    Enrollment,
    Personalization,
)
from cards.notify import email_holder
from cards.services import assign_holder, enroll_bank, issue_card, queue_job
from cards.signals import jobs_cancelled
from ecard.errors import ServiceError
from issuers.models import Organization
from issuers.roles import principal

MAX_REASON = 500

# (bank id, [(package AID, version)]) -> {(package AID, version): release id}: the bank's approved
# release of each package version (or its newest approved one). Releases live in ``updates``,
# above this app: it registers its finder in ``UpdatesConfig.ready``.
ReleaseFinder = Callable[[int, Sequence[tuple[str, str]]], dict[tuple[str, str], int]]
_release_finder: ReleaseFinder | None = None


def register_release_finder(finder: ReleaseFinder) -> None:
    global _release_finder
    _release_finder = finder


def _reason(reason: str, *, required: bool, what: str) -> str:
    text = " ".join((reason or "").split())
    if required and not text:
        raise ServiceError(f"say why the card is {what}", field="reason")
    if len(text) > MAX_REASON:
        raise ServiceError(f"the reason is over {MAX_REASON} characters", field="reason")
    return text


def _locked(card: Card) -> Card:
    return Card.objects.select_for_update(of=("self",)).select_related("issued_by", "holder").get(pk=card.pk)


def _agency_of(card: Card, actor: User) -> Organization | None:
    """The agency the actor operates for (the card's issuer), if they are its operator."""
    who = principal(actor)
    return card.issued_by if who.can_operate(card.issued_by_id) and card.issued_by.is_agency else None


def close_open_sessions(card: Card, reason: str) -> int:
    """End the card's open relay sessions now (their channel state dropped); what they were running
    waits again. In the caller's transaction, whose change is their audit entry."""
    closed = card.sessions.filter(state="open").update(state="expired", closed_reason=reason, sealed_channel=None)
    if closed:
        card.jobs.filter(state=CardJob.State.RUNNING).update(state=CardJob.State.PENDING)
    return int(closed)


def _set_standing(card: Card, standing: str, reason: str, now: dt.datetime) -> None:
    card.standing, card.standing_changed_at, card.standing_reason = standing, now, reason
    card.save(update_fields=["standing", "standing_changed_at", "standing_reason"])


def _cancel_status_work(card: Card) -> int:
    return card.jobs.filter(kind=CardJob.Kind.CARD_STATUS, state__in=CardJob.OPEN_STATES).update(
        state=CardJob.State.CANCELLED, finished_at=timezone.now(), last_error="superseded by a newer card status"
    )


def _queue_status(card: Card, target: str, actor: User) -> CardJob:
    """SET STATUS of the card to ``target``, by the agency's ISD, at its next presentation."""
    isd = card.security_domains.filter(is_isd=True).first()
    return queue_job(
        card=card,
        kind=CardJob.Kind.CARD_STATUS,
        organization=card.issued_by,
        actor=actor,
        security_domain=isd,
        params={"target": target},
    )


def enrolled_banks(card: Card) -> list[Organization]:
    """The banks with an enrollment on the card that is not over (requested, active, being removed)."""
    ids = set(card.enrollments.filter(status__in=Enrollment.OPEN_STATUSES).values_list("bank_id", flat=True))
    return list(Organization.objects.filter(pk__in=ids).order_by("name"))


def _notify_all(card: Card, banks: list[Organization], kind: str, message: str, **details: Any) -> list[BankNotice]:
    return [
        notify_bank(organization=bank, card=card, kind=kind, message=message, details={"card": card.cin, **details})
        for bank in banks
    ]


# ---------------------------------------------------------------------------------------------
# blocking


@transaction.atomic
def block_card(*, card: Card, actor: User, reason: str) -> Card:
    """Block a lost or stolen card: refused everywhere at once, locked by its ISD when presented."""
    card = _locked(card)
    agency = _agency_of(card, actor)
    is_holder = card.holder_id is not None and card.holder_id == actor.pk and principal(actor).is_citizen
    if agency is None and not is_holder:
        raise ServiceError("only the card's holder or the agency blocks a card", code="forbidden")
    reason = _reason(reason, required=True, what="blocked")
    if card.standing != Card.Standing.ACTIVE:
        raise ServiceError(f"the card is already {card.get_standing_display().lower()}", code="state")
    if card.lifecycle == Card.Lifecycle.TERMINATED:
        raise ServiceError("the card is TERMINATED", code="state")
    now = timezone.now()
    _set_standing(card, Card.Standing.BLOCKED, reason, now)
    sessions = close_open_sessions(card, "the card was blocked")
    _cancel_status_work(card)  # an unlock not run yet
    locked = card.lifecycle == Card.Lifecycle.CARD_LOCKED
    job = None if locked else _queue_status(card, Card.Lifecycle.CARD_LOCKED, actor)
    banks = enrolled_banks(card)
    record_event(
        action="card.blocked",
        subject_type="card",
        subject_id=card.cin,
        card_cin=card.cin,
        actor=actor,
        actor_org=agency,
        organization=card.issued_by,
        reason=reason,
        details={
            "by": "agency" if agency is not None else "holder",
            "lock_job": job.pk if job is not None else None,
            "sessions_closed": sessions,
            "banks_notified": [b.slug for b in banks],
        },
    )
    _notify_all(
        card,
        banks,
        BankNotice.Kind.CARD_BLOCKED,
        f"Card {card.cin} was blocked (reported lost or stolen): the platform refuses it and locks it when presented.",
    )
    email_holder(
        card,
        CitizenEmail.Kind.CARD_BLOCKED,
        f"Your card {card.cin} is blocked",
        f"Your card {card.cin} was blocked on {now:%Y-%m-%d %H:%M} UTC ({reason}).\n\n"
        "It is refused everywhere from now on; if it is presented anywhere, it locks itself. "
        "The banks on it have been told. If you find it again, the agency can unblock it; "
        "otherwise ask the agency for a replacement card.",
        dedupe_key=f"card_blocked:{card.cin}:{now.timestamp():.6f}",
    )
    return card


@transaction.atomic
def unblock_card(*, card: Card, actor: User, reason: str) -> Card:
    """The agency unblocks a card (found again), with a reason: its held work runs again, and a card
    its ISD proved CARD_LOCKED is set back to SECURED at its next presentation."""
    card = _locked(card)
    agency = _agency_of(card, actor)
    if agency is None:
        raise ServiceError("only the agency unblocks a card", code="forbidden")
    reason = _reason(reason, required=True, what="unblocked")
    if card.standing != Card.Standing.BLOCKED:
        raise ServiceError(f"the card is {card.get_standing_display().lower()}, not blocked", code="state")
    now = timezone.now()
    _set_standing(card, Card.Standing.ACTIVE, reason, now)
    _cancel_status_work(card)  # a lock not run yet: the card was never locked
    job = _queue_status(card, Card.Lifecycle.SECURED, actor) if card.lifecycle == Card.Lifecycle.CARD_LOCKED else None
    banks = enrolled_banks(card)
    record_event(
        action="card.unblocked",
        subject_type="card",
        subject_id=card.cin,
        card_cin=card.cin,
        actor=actor,
        actor_org=agency,
        organization=card.issued_by,
        reason=reason,
        details={"unlock_job": job.pk if job is not None else None, "banks_notified": [b.slug for b in banks]},
    )
    _notify_all(card, banks, BankNotice.Kind.CARD_UNBLOCKED, f"Card {card.cin} was unblocked: it is in use again.")
    email_holder(
        card,
        CitizenEmail.Kind.CARD_UNBLOCKED,
        f"Your card {card.cin} is unblocked",
        f"The agency unblocked your card {card.cin} on {now:%Y-%m-%d %H:%M} UTC. It works again"
        + (" once you present it (it unlocks itself then)." if job is not None else "."),
        dedupe_key=f"card_unblocked:{card.cin}:{now.timestamp():.6f}",
    )
    return card


# ---------------------------------------------------------------------------------------------
# replacement


@dataclass
class CarryOver:
    """What one enrollment of the old card becomes on the new one."""

    enrollment: Enrollment
    applets: list[dict[str, Any]] = field(default_factory=list)
    personalized: list[str] = field(default_factory=list)  # instances that had data on the old card
    left_out: list[str] = field(default_factory=list)  # what cannot be carried, and why
    refused: str = ""  # why the enrollment itself cannot be carried (the bank suspended, ...)


def _known_specs(enrollment: Enrollment) -> dict[str, dict[str, Any]]:
    """Install parameters of each instance as the bank gave them: its template's default applets,
    then the old card's own enroll job (newest wins)."""
    specs: dict[str, dict[str, Any]] = {}
    template = getattr(enrollment.bank, "ssd_template", None)
    for spec in template.default_applets if template is not None else []:
        specs[str(spec.get("instance_aid", "")).upper()] = spec
    jobs = enrollment.jobs.filter(kind=CardJob.Kind.ENROLL_BANK).order_by("created_at", "pk")
    for job in jobs:
        for spec in (job.params or {}).get("default_applets") or []:
            if isinstance(spec, dict):
                specs[str(spec.get("instance_aid", "")).upper()] = spec
    return specs


def plan_carry_over(old: Card) -> list[CarryOver]:
    """Each open enrollment of ``old`` with the applets its bank's SSD holds, at their releases."""
    plans: list[CarryOver] = []
    enrollments = old.enrollments.filter(
        status__in=(Enrollment.Status.REQUESTED, Enrollment.Status.ACTIVE)
    ).select_related("bank", "security_domain")
    for enrollment in enrollments.order_by("created_at", "pk"):
        plan = CarryOver(enrollment)
        plans.append(plan)
        bank = enrollment.bank
        if not (bank.is_bank and bank.is_active and hasattr(bank, "ssd_template")):
            plan.refused = f"{bank.name} is not an active bank ready for enrollment"
            continue
        known = _known_specs(enrollment)
        sd = enrollment.security_domain
        if enrollment.status == Enrollment.Status.REQUESTED or sd is None:
            # never installed on the old card: the applets it was waiting for
            pending = enrollment.jobs.filter(kind=CardJob.Kind.ENROLL_BANK).order_by("-created_at", "-pk").first()
            plan.applets = list((pending.params or {}).get("default_applets") or []) if pending else []
            continue
        instances = list(AppletInstance.objects.filter(security_domain=sd).order_by("instance_aid"))
        if _release_finder is None:
            raise ServiceError("releases cannot be looked up right now; try again later", code="unavailable")
        found = _release_finder(bank.pk, sorted({(i.package_aid, i.package_version) for i in instances}))
        packages_done: set[str] = set()
        for instance in instances:
            release = found.get((instance.package_aid, instance.package_version))
            if release is None:
                plan.left_out.append(f"{instance.instance_aid}: no approved release of {instance.package_aid}")
                continue
            if instance.package_aid in packages_done:
                # an enrollment loads each package once, with one instance (issuers.services.validate_default_applets)
                plan.left_out.append(f"{instance.instance_aid}: a second instance of {instance.package_aid}")
                continue
            packages_done.add(instance.package_aid)
            spec = known.get(instance.instance_aid.upper(), {})
            plan.applets.append(
                {
                    "release": release,
                    "instance_aid": instance.instance_aid.upper(),
                    "module_aid": instance.module_aid.upper(),
                    "package_aid": instance.package_aid.upper(),
                    "privileges": str(spec.get("privileges") or ""),
                    "install_params": str(spec.get("install_params") or ""),
                    **({"name": spec["name"]} if spec.get("name") else {}),
                }
            )
        with_instances = {i.package_aid for i in instances}
        for package in CardPackage.objects.filter(security_domain=sd).exclude(package_aid__in=with_instances):
            plan.left_out.append(f"{package.package_aid}: a library package, not carried (the bank loads it again)")
        plan.personalized = sorted(
            set(
                Personalization.objects.filter(security_domain=sd, state=Personalization.State.DELIVERED).values_list(
                    "instance_aid", flat=True
                )
            )
        )
    return plans


def _carried_consent(enrollment: Enrollment, old: Card, new: Card) -> str:
    return (
        f"{enrollment.consent_text}\n\nCarried over to card {new.cin} when card {old.cin} was replaced on "
        f"{timezone.now():%Y-%m-%d}: the consent given on {enrollment.consented_at:%Y-%m-%d} for card "
        f"{old.cin} applies to its replacement. I can remove the bank from the new card at any time."
    )


def _end_old_card(old: Card, reason: str, now: Any) -> dict[str, int]:
    """Terminate the old card's standing and withdraw its work: open jobs and pending data cancelled,
    open sessions closed, open enrollments over (carried to the new card)."""
    _set_standing(old, Card.Standing.TERMINATED, reason, now)
    sessions = close_open_sessions(old, "the card was replaced")
    reason = "the card was replaced"
    open_jobs = list(old.jobs.filter(state__in=CardJob.OPEN_STATES).select_for_update())
    jobs = CardJob.objects.filter(pk__in=[j.pk for j in open_jobs]).update(
        state=CardJob.State.CANCELLED, finished_at=now, last_error=reason
    )
    for job in open_jobs:
        job.state, job.finished_at, job.last_error, job.card = CardJob.State.CANCELLED, now, reason, old
    jobs_cancelled.send(sender=CardJob, jobs=open_jobs, reason=reason)  # rollouts and repairs count them
    data = old.personalizations.filter(state=Personalization.State.PENDING).update(
        state=Personalization.State.CANCELLED
    )
    enrollments = old.enrollments.filter(status__in=Enrollment.OPEN_STATUSES).update(
        status=Enrollment.Status.CANCELLED, updated_at=now
    )
    return {"sessions_closed": sessions, "jobs_cancelled": jobs, "data_cancelled": data, "enrollments": enrollments}


def _key_scheme_for(old: Card) -> str:
    """A replacement's ISD key diversification: the old card's, or the default of its SCP."""
    if old.key_scheme in ("kdf3", "emv", "visa2"):
        return old.key_scheme
    return "kdf3" if old.scp == 0x03 else "emv"


def _stock_card(agency: Organization, cin: str) -> Card:
    """A card from the agency's stock to hand out as a replacement: issued by it (a real card
    imported from a manufacturer's file, or an emulated one), in use, SECURED, with no holder and
    nothing on it yet."""
    card = Card.objects.select_for_update().filter(cin=cin.strip().upper(), issued_by=agency).first()
    if card is None:
        raise ServiceError(f"the agency has no card {cin}", field="new_card", code="not_found")
    if card.holder_id is not None:
        raise ServiceError(f"card {card.cin} already has a holder", field="new_card", code="state")
    if card.standing != Card.Standing.ACTIVE or card.lifecycle != Card.Lifecycle.SECURED:
        raise ServiceError(f"card {card.cin} is not a card in use (SECURED)", field="new_card", code="state")
    if card.enrollments.exists() or card.jobs.exists():
        raise ServiceError(f"card {card.cin} has been used already", field="new_card", code="state")
    return card


@transaction.atomic
def replace_card(*, old_card: Card, actor: User, reason: str = "", new_card_cin: str = "") -> Card:
    """Give the old card's holder a new card, carry every enrollment over as jobs on it, ask the
    banks for personalisation again, and terminate the old card. Returns the new card.

    The new card is issued now (emulated or not, like the old one), or with ``new_card_cin`` taken
    from the agency's stock: a card with no holder yet, such as a real card imported from a
    manufacturer's file (``cards.manufacturer``)."""
    old = _locked(old_card)
    agency = _agency_of(old, actor)
    if agency is None:
        raise ServiceError("only the agency replaces a card", code="forbidden")
    stock = _stock_card(old.issued_by, new_card_cin) if new_card_cin else None
    if stock is not None and stock.pk == old.pk:
        raise ServiceError("a card cannot replace itself", field="new_card", code="state")
    reason = _reason(reason, required=False, what="replaced") or "replaced"
    if old.standing == Card.Standing.TERMINATED or old.lifecycle == Card.Lifecycle.TERMINATED:
        raise ServiceError("the card is already terminated", code="state")
    holder = old.holder
    if holder is None:
        raise ServiceError("the card has no holder to issue a replacement to", field="card", code="state")
    plans = plan_carry_over(old)
    banks = enrolled_banks(old)
    now = timezone.now()
    ended = _end_old_card(old, reason, now)
    terminate_job = _queue_status(old, Card.Lifecycle.TERMINATED, actor)
    if stock is not None:
        new = assign_holder(card=stock, holder=holder, actor=actor)
    else:
        new = issue_card(
            agency=old.issued_by,
            holder=holder,
            scp=old.scp,
            key_scheme=_key_scheme_for(old),
            emulated=old.emulated,
            actor=actor,
        )
    Card.objects.filter(pk=old.pk).update(replaced_by=new)
    old.replaced_by = new
    carried, not_carried = [], []
    for plan in plans:
        bank = plan.enrollment.bank
        if plan.refused:
            not_carried.append({"bank": bank.slug, "why": plan.refused})
            continue
        enrollment = enroll_bank(
            card=new,
            bank=bank,
            citizen=holder,
            consent_text=_carried_consent(plan.enrollment, old, new),
            consented_at=plan.enrollment.consented_at,
            default_applets=plan.applets,
            carried_from=old.cin,
        )
        record_event(
            action="enrollment.carried_over",
            subject_type="enrollment",
            subject_id=enrollment.pk,
            card_cin=new.cin,
            actor=actor,
            actor_org=agency,
            organization=bank,
            details={
                "from_card": old.cin,
                "from_enrollment": plan.enrollment.pk,
                "instances": [a["instance_aid"] for a in plan.applets],
                "left_out": plan.left_out,
            },
        )
        carried.append(bank.slug)
    record_event(
        action="card.replaced",
        subject_type="card",
        subject_id=old.cin,
        card_cin=old.cin,
        actor=actor,
        actor_org=agency,
        organization=old.issued_by,
        reason=reason,
        details={
            "replacement": new.cin,
            "terminate_job": terminate_job.pk,
            "carried": carried,
            "not_carried": not_carried,
            **ended,
        },
    )
    details = {"replacement": new.cin, "replacement_card_number": new.serial}
    _notify_all(
        old,
        banks,
        BankNotice.Kind.CARD_REPLACED,
        f"Card {old.cin} was replaced by card {new.cin} (card number {new.serial}); the old card is terminated "
        "and your security domain is being installed on the new one.",
        **details,
    )
    for plan in plans:
        instances = [a["instance_aid"] for a in plan.applets]
        if plan.refused or not instances:
            continue
        notify_bank(
            organization=plan.enrollment.bank,
            card=new,
            kind=BankNotice.Kind.PERSONALIZATION_REQUESTED,
            message=(
                f"Card {new.cin} (card number {new.serial}) replaces card {old.cin}: give the personalisation "
                f"data of {', '.join(instances)} again (data sealed for the old card does not open on the new one)."
            ),
            details={
                "card": new.cin,
                "card_number": new.serial,
                "replaces": old.cin,
                "instances": instances,
                "personalized_on_old_card": plan.personalized,
            },
        )
    email_holder(
        new,
        CitizenEmail.Kind.CARD_REPLACED,
        f"Your replacement card {new.cin}",
        f"The agency issued card {new.cin} to replace your card {old.cin}, which no longer works.\n\n"
        + (
            f"Your banks ({', '.join(carried)}) are moved to the new card the first time you present it."
            if carried
            else "Present the new card once to set it up."
        ),
        dedupe_key=f"card_replaced:{old.cin}",
    )
    return new


# ---------------------------------------------------------------------------------------------
# reads


@dataclass(frozen=True)
class ProgressRow:
    """One enrollment of the old card and what became of it on the new one."""

    bank: str
    old_status: str
    status: str  # the new card's enrollment, in words
    applets: list[str]
    data_pending: int
    data_delivered: int
    jobs_open: int
    jobs_failed: int


def replacement_progress(card: Card) -> tuple[Card | None, list[ProgressRow]]:
    """For a card that replaced an older one: that card and, per carried enrollment, its progress
    (one list for the holder: the old card's banks → the new card's jobs)."""
    old = Card.objects.filter(replaced_by=card).order_by("-standing_changed_at", "-pk").first()
    if old is None:
        return None, []
    rows: list[ProgressRow] = []
    carried = (
        card.enrollments.filter(jobs__params__carried_from=old.cin)
        .select_related("bank", "security_domain")
        .distinct()
        .order_by("bank__name")
    )
    for enrollment in carried:
        jobs = CardJob.objects.filter(Q(enrollment=enrollment) | Q(security_domain=enrollment.security_domain))
        applets = [
            str(spec.get("name") or spec.get("instance_aid"))
            for job in jobs.filter(kind=CardJob.Kind.ENROLL_BANK)
            for spec in (job.params or {}).get("default_applets") or []
        ]
        data = Personalization.objects.filter(security_domain=enrollment.security_domain)
        rows.append(
            ProgressRow(
                bank=enrollment.bank.name,
                old_status=f"on card {old.cin}",
                status=enrollment.get_status_display(),
                applets=applets,
                data_pending=data.filter(state=Personalization.State.PENDING).count(),
                data_delivered=data.filter(state=Personalization.State.DELIVERED).count(),
                jobs_open=jobs.filter(state__in=CardJob.OPEN_STATES).count(),
                jobs_failed=jobs.filter(state=CardJob.State.FAILED).count(),
            )
        )
    return old, rows


def notices_for_bank(bank: Organization) -> QuerySet[BankNotice]:
    """The bank's card notices, newest first (its API and dashboard)."""
    return BankNotice.objects.filter(organization=bank).select_related("card").order_by("-created_at", "-pk")
