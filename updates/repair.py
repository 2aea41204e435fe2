"""Card repair (issue 19, docs/repair.md): bring a card whose content disagrees with the platform's
records back to them.

1. :func:`start_repair` (the agency) queues a survey job: an ISD channel reads the whole registry
   (``updates.repair_stages.IsdSurvey``). Only complete R-MAC'd listings count.
2. :func:`record_survey` (applied by the engine with the survey's effect) keeps what the card
   listed and computes the plan with :func:`diff_registry`, a pure function of the listing and the
   records: unknown content to delete, missing applets and packages to reinstall at the recorded
   release, security domains whose lock state differs, keys out of step.
3. :func:`execute_repair` (the agency, after reviewing the plan) asks each bank whose security
   domain a step touches for its consent (:class:`cards.models.RepairConsent`, with a bank
   notice); :func:`decide_consent` records the bank's answer. Once no answer is pending, the
   consented steps are queued as ordinary jobs (:func:`_queue_plan`); a refusing bank's content is
   left as it is.
4. :func:`job_changed` follows the jobs (``updates.signals.job_state_changed``): every job done →
   the repair is done; a job failed → the repair failed with its error.

Every step writes its audit entry (``repair.*``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Prefetch
from django.utils import timezone

from audit.services import record_event
from cards import services as card_services
from cards.bank_notices import notify_bank
from cards.models import (
    AppletInstance,
    BankNotice,
    Card,
    CardJob,
    CardPackage,
    CardRepair,
    RepairConsent,
    SecurityDomain,
)
from ecard.errors import ServiceError
from gp.javacard import ROM_PACKAGES
from issuers.models import Organization
from issuers.roles import principal
from updates.engine.effects import ListedContent, RegistrySurveyed
from updates.models import Release

ROM_AIDS = frozenset(aid.hex().upper() for aid, _version, _name in ROM_PACKAGES)
LOCKED_BIT = 0x80  # GP 2.3.1 §11.1.1: an application's or SD's life cycle with b8 set is LOCKED

# Plan step actions, in the order their jobs are queued (unlock first, so the bank's security
# domain can be selected; lock last, after its content is restored).
UNLOCK, DELETE, REMOVE_PACKAGE, REINSTALL, ROTATE_KEYS, LOCK, UNRESTORABLE = (
    "unlock",
    "delete",
    "remove_package",
    "reinstall",
    "rotate_keys",
    "lock",
    "unrestorable",
)


# ------------------------------------------------------------------------------------------- the diff


@dataclass(frozen=True)
class RecordedApplet:
    instance_aid: str
    package_aid: str
    package_version: str


@dataclass(frozen=True)
class RecordedPackage:
    package_aid: str
    version: str
    release: int | None  # the bank's release of this AID and version, if the platform has it


@dataclass(frozen=True)
class RecordedSd:
    """What the records say of one security domain of the card."""

    aid: str
    bank: str  # the owner's slug ("" for the ISD)
    bank_name: str
    is_isd: bool
    live: bool  # expected on the card (active, or its removal pending)
    locked: bool
    key_kvn: int | None
    auth_failures: int
    aid_prefixes: tuple[str, ...] = ()  # the owner's AID ranges
    applets: tuple[RecordedApplet, ...] = ()
    packages: tuple[RecordedPackage, ...] = ()

    def in_range(self, aid: str) -> bool:
        return any(aid.startswith(prefix) for prefix in self.aid_prefixes)


@dataclass
class _Plan:
    steps: list[dict[str, Any]] = field(default_factory=list)

    def add(self, action: str, text: str, *, aid: str = "", sd: str = "", bank: str = "", **extra: Any) -> None:
        self.steps.append({"action": action, "aid": aid, "sd": sd, "bank": bank, "text": text, **extra})


def diff_registry(listed: Iterable[ListedContent], recorded: Iterable[RecordedSd]) -> list[dict[str, Any]]:
    """The steps that bring the card (``listed``: what it R-MAC'd) back to the records. Pure.

    Each step is a JSON object: ``action`` (``delete`` by the ISD, ``remove_package``/``reinstall``
    by the bank, ``unlock``/``lock``/``rotate_keys``, or ``unrestorable``), the ``aid`` it is about,
    the ``sd`` it lives in, the ``bank`` whose security domain it touches (its slug; empty for the
    ISD's own content: no bank consents to it) and a ``text`` in words.
    """
    listed = list(listed)
    sds = {sd.aid: sd for sd in recorded}
    live = {aid: sd for aid, sd in sds.items() if sd.live and not sd.is_isd}
    isd = next((sd for sd in sds.values() if sd.is_isd), None)
    known_instances = {a.instance_aid for sd in live.values() for a in sd.applets}
    known_packages = {p.package_aid for sd in live.values() for p in sd.packages}
    apps = {e.aid: e for e in listed if e.kind != "elf"}
    elfs = {e.aid: e for e in listed if e.kind == "elf"}
    plan = _Plan()

    # -- content the records do not know
    unknown_sds = {e.aid for e in apps.values() if e.kind == "sd" and e.aid not in live and e.aid != (isd and isd.aid)}
    removed_by_bank: set[str] = set()
    deleted_by_isd: set[str] = set()

    def where(entry: ListedContent) -> tuple[str, RecordedSd | None]:
        owner = live.get(entry.sd)
        return (entry.sd or (isd.aid if isd else ""), owner)

    for aid in sorted(unknown_sds):
        entry = apps[aid]
        former = sds.get(aid)  # a security domain the records hold as pending or removed
        bank = former.bank if former is not None and not former.is_isd else ""
        plan.add(
            DELETE,
            f"Delete the security domain {aid}, unknown to the registry, with everything in it",
            aid=aid,
            sd=entry.sd,
            bank=bank,
            what="security domain",
        )
        deleted_by_isd.add(aid)
    for aid, entry in sorted(elfs.items()):
        if aid in known_packages or aid in ROM_AIDS or entry.sd in unknown_sds:
            continue
        sd_aid, owner = where(entry)
        if owner is not None and owner.in_range(aid):
            plan.add(
                REMOVE_PACKAGE,
                f"{owner.bank_name} deletes package {aid} v{entry.version or '?'}, unknown to the registry, "
                "from its security domain",
                aid=aid,
                sd=sd_aid,
                bank=owner.bank,
                what="package",
            )
            removed_by_bank.add(aid)
        else:
            text = f"Delete package {aid} v{entry.version or '?'}, unknown to the registry, and its applets"
            plan.add(
                DELETE,
                text + (f" (in {owner.bank_name}'s security domain)" if owner else ""),
                aid=aid,
                sd=sd_aid,
                bank=owner.bank if owner else "",
                what="package",
            )
            deleted_by_isd.add(aid)
    for aid, entry in sorted(apps.items()):
        if entry.kind != "app" or aid in known_instances or entry.sd in unknown_sds:
            continue
        if entry.elf in removed_by_bank or entry.elf in deleted_by_isd:
            continue  # deleted with its package (related objects, GP 2.3.1 §11.2.2.1)
        sd_aid, owner = where(entry)
        plan.add(
            DELETE,
            f"Delete applet {aid}, unknown to the registry"
            + (f" (in {owner.bank_name}'s security domain)" if owner else ""),
            aid=aid,
            sd=sd_aid,
            bank=owner.bank if owner else "",
            what="applet",
        )
        deleted_by_isd.add(aid)

    # -- what the records hold and the card lacks, and what differs
    for sd in sorted(live.values(), key=lambda s: s.aid):
        listed_sd = apps.get(sd.aid)
        if listed_sd is None:
            plan.add(
                UNRESTORABLE,
                f"{sd.bank_name}'s security domain is missing from the card: the holder adds the bank again",
                aid=sd.aid,
                sd=sd.aid,
                bank=sd.bank,
            )
            continue
        card_locked = bool(listed_sd.lifecycle & LOCKED_BIT)
        if card_locked and not sd.locked:
            plan.add(
                UNLOCK,
                f"Unlock {sd.bank_name}'s security domain (locked on the card)",
                aid=sd.aid,
                sd=sd.aid,
                bank=sd.bank,
            )
        packages: dict[str, dict[str, Any]] = {}

        for package in sd.packages:
            on_card = elfs.get(package.package_aid)
            if on_card is None:
                _restore(
                    packages, sd, package.package_aid, package.version, f"package {package.package_aid} is missing"
                )
            elif on_card.version and on_card.version != package.version:
                _restore(packages, sd, package.package_aid, package.version, f"the card holds v{on_card.version}")
        for applet in sd.applets:
            if applet.instance_aid not in apps:
                why = f"applet {applet.instance_aid} is missing"
                _restore(packages, sd, applet.package_aid, applet.package_version, why)
        for package_aid, step in sorted(packages.items()):
            instances = sorted(a.instance_aid for a in sd.applets if a.package_aid == package_aid)
            why = "; ".join(step["why"])
            if step["release"] is None:
                plan.add(
                    UNRESTORABLE,
                    f"{sd.bank_name}'s package {package_aid} v{step['version']} cannot be restored: the platform "
                    f"has no release of it ({why})",
                    aid=package_aid,
                    sd=sd.aid,
                    bank=sd.bank,
                )
                continue
            plan.add(
                REINSTALL,
                f"{sd.bank_name} reinstalls package {package_aid} v{step['version']}"
                + (f" with applets {', '.join(instances)}" if instances else "")
                + f" ({why})",
                aid=package_aid,
                sd=sd.aid,
                bank=sd.bank,
                version=step["version"],
                release=step["release"],
                instances=instances,
                # lost with their data: the bank's last delivered personalisation goes to them again
                missing=[aid for aid in instances if aid not in apps],
            )
        if sd.auth_failures or sd.key_kvn is None:
            reason = f"{sd.auth_failures} failed authentications" if sd.auth_failures else "no key version proven yet"
            plan.add(
                ROTATE_KEYS,
                f"{sd.bank_name} puts a fresh key set into its security domain ({reason})",
                aid=sd.aid,
                sd=sd.aid,
                bank=sd.bank,
            )
        if sd.locked and not card_locked:
            plan.add(
                LOCK,
                f"Lock {sd.bank_name}'s security domain again (unlocked on the card)",
                aid=sd.aid,
                sd=sd.aid,
                bank=sd.bank,
            )
    order = [UNLOCK, DELETE, REMOVE_PACKAGE, REINSTALL, ROTATE_KEYS, LOCK, UNRESTORABLE]
    return sorted(plan.steps, key=lambda step: order.index(step["action"]))


def _restore(packages: dict[str, dict[str, Any]], sd: RecordedSd, package_aid: str, version: str, why: str) -> None:
    """Note that ``package_aid`` of ``sd`` is reinstalled at ``version`` (its release, if any), and why."""
    step = packages.get(package_aid)
    if step is None:
        release = next((p.release for p in sd.packages if p.package_aid == package_aid and p.version == version), None)
        packages[package_aid] = {"version": version, "release": release, "why": [why]}
    elif why not in step["why"]:
        step["why"].append(why)


def recorded_content(card: Card) -> list[RecordedSd]:
    """The records of the card, as :func:`diff_registry` reads them (a few queries)."""
    sds = list(
        SecurityDomain.objects.filter(card=card)
        .select_related("organization")
        .prefetch_related(
            Prefetch("applets", queryset=AppletInstance.objects.order_by("instance_aid")),
            Prefetch("packages", queryset=CardPackage.objects.order_by("package_aid")),
            "organization__aid_ranges",
        )
        .order_by("aid")
    )
    wanted = {(sd.organization_id, p.package_aid, p.package_version) for sd in sds for p in sd.packages.all()}
    wanted |= {(sd.organization_id, a.package_aid, a.package_version) for sd in sds for a in sd.applets.all()}
    releases: dict[tuple[int, str, str], int] = {}
    aids = {aid for _org, aid, _version in wanted}
    # approved releases win over others of the same version: the one a token is signed for
    for release in Release.objects.filter(package_aid__in=aids).order_by("-state", "-pk"):
        key = (release.bank_id, release.package_aid, release.package_version)
        if key in wanted and (key not in releases or release.state == Release.State.APPROVED):
            releases[key] = release.pk
    out = []
    for sd in sds:
        packages = {p.package_aid: p.package_version for p in sd.packages.all()}
        for applet in sd.applets.all():  # an instance whose package record is missing still names it
            packages.setdefault(applet.package_aid, applet.package_version)
        out.append(
            RecordedSd(
                aid=sd.aid,
                bank="" if sd.is_isd else sd.organization.slug,
                bank_name=sd.organization.name,
                is_isd=sd.is_isd,
                live=sd.state in (SecurityDomain.State.ACTIVE, SecurityDomain.State.REMOVING),
                locked=sd.lifecycle == SecurityDomain.Lifecycle.LOCKED,
                key_kvn=sd.key_kvn,
                auth_failures=sd.auth_failures,
                aid_prefixes=tuple(r.prefix.upper() for r in sd.organization.aid_ranges.all()),
                applets=tuple(
                    RecordedApplet(a.instance_aid.upper(), a.package_aid.upper(), a.package_version)
                    for a in sd.applets.all()
                ),
                packages=tuple(
                    RecordedPackage(aid.upper(), version, releases.get((sd.organization_id, aid, version)))
                    for aid, version in sorted(packages.items())
                ),
            )
        )
    return out


def observed_json(content: Iterable[ListedContent]) -> dict[str, Any]:
    """The surveyed registry as stored in ``CardRepair.observed``."""
    apps, elfs = [], []
    for e in content:
        if e.kind == "elf":
            elfs.append({"aid": e.aid, "version": e.version, "sd": e.sd, "modules": list(e.modules)})
        else:
            apps.append({"aid": e.aid, "kind": e.kind, "lifecycle": e.lifecycle, "sd": e.sd, "elf": e.elf})
    return {"apps": apps, "elfs": elfs}


# ------------------------------------------------------------------------------------------- services


def _require_agency_operator(actor: User) -> Organization:
    who = principal(actor)
    if not who.agency_operator:
        raise ServiceError("only the agency's operators repair cards", code="forbidden")
    return Organization.objects.get(pk=next(o for o in who.org_ids(Organization.Kind.AGENCY) if who.can_operate(o)))


def _event(
    repair: CardRepair,
    action: str,
    *,
    actor: User | None = None,
    organization: Organization | None = None,
    outcome: str = "success",
    reason: str = "",
    **details: Any,
) -> None:
    record_event(
        action=action,
        subject_type="card_repair",
        subject_id=repair.pk,
        card_cin=repair.card.cin,
        actor=actor,
        actor_type="user" if actor is not None else "system",
        organization=organization,
        outcome=outcome,
        reason=reason,
        details=details,
    )


@transaction.atomic
def start_repair(*, card: Card, actor: User, reason: str = "") -> CardRepair:
    """The agency starts repairing ``card``: a survey job reads its registry at the next presentation."""
    agency = _require_agency_operator(actor)
    card = Card.objects.select_for_update().get(pk=card.pk)
    if card.lifecycle != Card.Lifecycle.SECURED or card.standing != Card.Standing.ACTIVE:
        raise ServiceError(
            f"the card is {card.lifecycle} ({card.get_standing_display()}): it cannot be repaired", code="state"
        )
    if CardRepair.objects.filter(card=card, state__in=CardRepair.OPEN_STATES).exists():
        raise ServiceError("a repair of this card is already under way", code="duplicate")
    if card.jobs.filter(state__in=CardJob.OPEN_STATES).exists():
        raise ServiceError(
            "the card has pending work: let it run (or cancel it) first, so the survey reads a card at rest",
            code="state",
        )
    try:
        with transaction.atomic():
            repair = CardRepair.objects.create(card=card, reason=reason[:500], created_by=actor)
    except IntegrityError as exc:
        raise ServiceError("a repair of this card is already under way", code="duplicate") from exc
    _event(repair, "repair.started", actor=actor, organization=agency, reason=reason[:500])
    repair.survey_job = card_services.queue_job(
        card=card,
        kind=CardJob.Kind.SURVEY_CARD,
        organization=agency,
        actor=actor,
        params={"repair": repair.pk},
    )
    repair.save(update_fields=["survey_job"])
    repair.jobs.add(repair.survey_job)
    return repair


def record_survey(effect: RegistrySurveyed) -> CardRepair | None:
    """The survey job proved the card's registry: keep it and compute the plan (inside the
    exchange's transaction). An empty plan: the card already matches, the repair is done."""
    repair = (
        CardRepair.objects.select_related("card")
        .filter(survey_job_id=effect.job, state=CardRepair.State.SURVEYING)
        .first()
    )
    if repair is None:
        return None
    repair.observed = observed_json(effect.content)
    repair.plan = diff_registry(effect.content, recorded_content(repair.card))
    actions = [step["action"] for step in repair.plan]
    if not repair.plan:
        repair.state = CardRepair.State.DONE
        repair.finished_at = timezone.now()
    else:
        repair.state = CardRepair.State.PLANNED
    repair.save(update_fields=["observed", "plan", "state", "finished_at"])
    _event(repair, "repair.planned", organization=repair.card.issued_by, steps=len(actions), actions=actions)
    if not repair.plan:
        _event(repair, "repair.done", organization=repair.card.issued_by, reason="the card matches the registry")
    return repair


def touched_banks(repair: CardRepair) -> list[str]:
    """Slugs of the banks whose security domain a step of the plan touches (they consent to it)."""
    return sorted({step["bank"] for step in repair.plan if step.get("bank") and step["action"] != UNRESTORABLE})


@transaction.atomic
def execute_repair(*, repair: CardRepair, actor: User) -> CardRepair:
    """The agency approves the plan: the banks it touches are asked for their consent; once none
    is pending the steps are queued as jobs."""
    agency = _require_agency_operator(actor)
    repair = CardRepair.objects.select_for_update().select_related("card").get(pk=repair.pk)
    if repair.state != CardRepair.State.PLANNED:
        raise ServiceError(
            f"the repair is {repair.get_state_display().lower()}: only a planned repair runs", code="state"
        )
    banks = Organization.objects.filter(slug__in=touched_banks(repair)).order_by("slug")
    _event(repair, "repair.executed", actor=actor, organization=agency, banks=[b.slug for b in banks])
    for bank in banks:
        RepairConsent.objects.create(repair=repair, bank=bank)
        steps = [step["text"] for step in repair.plan if step.get("bank") == bank.slug]
        notify_bank(
            organization=bank,
            card=repair.card,
            kind=BankNotice.Kind.REPAIR_CONSENT,
            message=f"The agency repairs card {repair.card.cin}; {len(steps)} step(s) touch your security domain "
            "and wait for your consent.",
            details={"repair": repair.pk, "card": repair.card.cin, "steps": steps},
        )
    if banks:
        repair.state = CardRepair.State.AWAITING_CONSENT
        repair.save(update_fields=["state"])
        return repair
    return _queue_plan(repair, actor)


@transaction.atomic
def decide_consent(*, repair: CardRepair, bank: Organization, actor: User, give: bool) -> RepairConsent:
    """A bank gives or refuses its consent to the steps that touch its security domain."""
    who = principal(actor)
    if not who.can_operate(bank.pk):
        raise ServiceError(f"only {bank.name}'s operators answer for it", code="forbidden")
    repair = CardRepair.objects.select_for_update().select_related("card").get(pk=repair.pk)
    consent = RepairConsent.objects.filter(repair=repair, bank=bank).first()
    if consent is None:
        raise ServiceError("this repair does not touch your security domain", code="forbidden")
    if repair.state != CardRepair.State.AWAITING_CONSENT or consent.state != RepairConsent.State.PENDING:
        raise ServiceError("this consent is not awaited", code="state")
    consent.state = RepairConsent.State.GIVEN if give else RepairConsent.State.REFUSED
    consent.decided_by = actor
    consent.decided_at = timezone.now()
    consent.save(update_fields=["state", "decided_by", "decided_at"])
    _event(repair, "repair.consent_given" if give else "repair.consent_refused", actor=actor, organization=bank)
    if not repair.consents.filter(state=RepairConsent.State.PENDING).exists():
        _queue_plan(repair, actor)
    return consent


def _queue_plan(repair: CardRepair, actor: User) -> CardRepair:
    """Queue the steps whose bank consented (or that touch no bank) as ordinary jobs, in the
    plan's order: unlock, the ISD's deletions, each bank's package job, key rotations, lock."""
    card = repair.card
    refused = set(repair.consents.filter(state=RepairConsent.State.REFUSED).values_list("bank__slug", flat=True))
    steps = [s for s in repair.plan if s["action"] != UNRESTORABLE and s.get("bank", "") not in refused]
    sds = {sd.aid: sd for sd in SecurityDomain.objects.filter(card=card).select_related("organization")}
    jobs: list[CardJob] = []

    def queue(
        kind: str, sd: SecurityDomain | None, params: dict[str, Any], organization: Organization | None = None
    ) -> None:
        jobs.append(
            card_services.queue_job(
                card=card,
                kind=kind,
                organization=organization or (sd.organization if sd is not None else card.issued_by),
                actor=actor,
                security_domain=sd,
                params={**params, "repair": repair.pk},
            )
        )

    for step in steps:
        if step["action"] == UNLOCK and step["sd"] in sds:
            queue(CardJob.Kind.UNLOCK_SD, sds[step["sd"]], {"sd_aid": step["sd"]})
    deletes = [s["aid"] for s in steps if s["action"] == DELETE]
    if deletes:
        queue(CardJob.Kind.REPAIR_ISD, None, {"delete": deletes})
    for sd_aid in sorted({s["sd"] for s in steps if s["action"] in (REMOVE_PACKAGE, REINSTALL)}):
        sd = sds.get(sd_aid)
        if sd is None:
            continue
        params: dict[str, Any] = {}
        removals = [s["aid"] for s in steps if s["sd"] == sd_aid and s["action"] == REMOVE_PACKAGE]
        reinstalls = [s for s in steps if s["sd"] == sd_aid and s["action"] == REINSTALL]
        if removals:
            params["remove"] = removals
        if reinstalls:
            params["packages"] = [{"release": s["release"], "instances": s["instances"]} for s in reinstalls]
            params["repersonalize"] = sorted({aid for s in reinstalls for aid in s.get("missing", [])})
        queue(CardJob.Kind.UPDATE_APPLET, sd, params)
    for step in steps:
        if step["action"] == ROTATE_KEYS and step["sd"] in sds:
            sd = sds[step["sd"]]
            queue(
                CardJob.Kind.ROTATE_KEYS,
                sd,
                {"sd_aid": sd.aid, "from_kvn": sd.key_kvn, "to_kvn": card_services.next_kvn(sd)},
            )
    for step in steps:
        if step["action"] == LOCK and step["sd"] in sds:
            queue(CardJob.Kind.LOCK_SD, sds[step["sd"]], {"sd_aid": step["sd"]})
    if jobs:
        repair.jobs.add(*jobs)
        repair.state = CardRepair.State.RUNNING
        repair.save(update_fields=["state"])
        _event(repair, "repair.jobs_queued", organization=card.issued_by, jobs=[j.pk for j in jobs])
        return repair
    repair.state = CardRepair.State.CANCELLED
    repair.error = "nothing left to do: every step was refused or cannot be restored"
    repair.finished_at = timezone.now()
    repair.save(update_fields=["state", "error", "finished_at"])
    _event(repair, "repair.cancelled", organization=card.issued_by, reason=repair.error)
    return repair


def job_changed(job: CardJob, state: str, error: str = "") -> None:
    """A job of a repair changed state (``updates.signals.job_state_changed``, in the exchange's
    transaction): all done → the repair is done; one failed → the repair failed."""
    repair_id = (job.params or {}).get("repair")
    if repair_id is None or state not in (CardJob.State.DONE, CardJob.State.FAILED, CardJob.State.CANCELLED):
        return
    repair = CardRepair.objects.select_related("card").filter(pk=repair_id, state__in=CardRepair.OPEN_STATES).first()
    if repair is None:
        return
    now = timezone.now()
    if state == CardJob.State.CANCELLED:  # the card was replaced (cards.lifecycle): nothing left to repair
        repair.state = CardRepair.State.CANCELLED
        repair.error = f"{job.get_kind_display()} cancelled: {error}"[:2000]
        repair.finished_at = now
        repair.save(update_fields=["state", "error", "finished_at"])
        _event(repair, "repair.cancelled", organization=repair.card.issued_by, reason=repair.error, job=job.pk)
        return
    if state == CardJob.State.FAILED:
        repair.state = CardRepair.State.FAILED
        repair.error = f"{job.get_kind_display()} failed: {error}"[:2000]
        repair.finished_at = now
        repair.save(update_fields=["state", "error", "finished_at"])
        _event(
            repair,
            "repair.failed",
            organization=repair.card.issued_by,
            outcome="failure",
            reason=repair.error,
            job=job.pk,
        )
        return
    if repair.state != CardRepair.State.RUNNING:
        return  # the survey job: its effect planned the repair already
    others = repair.jobs.exclude(pk=job.pk).exclude(state=CardJob.State.DONE)
    if repair.survey_job_id is not None:
        others = others.exclude(pk=repair.survey_job_id)
    if others.exists():
        return
    repair.state = CardRepair.State.DONE
    repair.finished_at = now
    repair.save(update_fields=["state", "finished_at"])
    _event(
        repair, "repair.done", organization=repair.card.issued_by, jobs=list(repair.jobs.values_list("pk", flat=True))
    )


@transaction.atomic
def cancel_repair(*, repair: CardRepair, actor: User) -> CardRepair:
    """The agency abandons a repair that has not queued its jobs yet (its survey job is cancelled)."""
    agency = _require_agency_operator(actor)
    repair = CardRepair.objects.select_for_update().select_related("card").get(pk=repair.pk)
    if repair.state not in (CardRepair.State.SURVEYING, CardRepair.State.PLANNED, CardRepair.State.AWAITING_CONSENT):
        raise ServiceError(f"the repair is {repair.get_state_display().lower()}", code="state")
    now = timezone.now()
    if repair.survey_job_id is not None:
        CardJob.objects.filter(pk=repair.survey_job_id, state=CardJob.State.PENDING).update(
            state=CardJob.State.CANCELLED, finished_at=now
        )
    repair.state = CardRepair.State.CANCELLED
    repair.finished_at = now
    repair.save(update_fields=["state", "finished_at"])
    _event(repair, "repair.cancelled", actor=actor, organization=agency)
    return repair
