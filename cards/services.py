"""Write operations of the cards app: issuing cards, enrollments, and the card work they create.

Each service runs in one transaction with its audit entry. Work on the card itself is queued as
:class:`cards.models.CardJob` rows and carried out the next time the card is presented.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.security import Kind as SecurityKind
from audit.security import records_refusals
from audit.services import record_event
from cards import emulation, holder_emails, validity
from cards.models import ISD_AID, Card, CardJob, Enrollment, SecurityDomain
from cards.signals import auth_failures_cleared, job_queued
from ecard.errors import ServiceError
from ecard.prepared_sql import JoinedRead
from gp.commands import Privileges
from issuers.code_signing import bank_dap_point
from issuers.models import Organization, SsdTemplate
from issuers.services import bank_aid_prefixes, normalise_hex

# GP Card Spec 2.3.1 §11.1.2 privileges, 3 bytes. Byte 1: 80 Security Domain, 40 DAP Verification,
# 20 Delegated Management, 10 Card Lock, 08 Card Terminate, 04 Card Reset, 02 CVM Management,
# 01 Mandated DAP. Byte 2: 80 Trusted Path, 40 Authorized Management, 20 Token Verification,
# 10 Global Delete, 08 Global Lock, 04 Global Registry, 02 Final Application, 01 Global Service.
# Byte 3: 80 Receipt Generation, 40 Ciphered Load File Data Block.
PRIVILEGES_SSD_DM = "A00000"
PRIVILEGES_SSD_AM = "804000"
# ISD: Security Domain, Card Lock, Card Terminate, Card Reset (byte 1 0x9E), CVM Management,
# Trusted Path, Authorized Management, Token Verification, Global Delete/Lock/Registry, Final
# Application (byte 2 0xFE), Receipt Generation (byte 3 0x80).
PRIVILEGES_ISD = "9EFE80"


def consent_text_for(card: Card, bank: Organization) -> str:
    """What a citizen agrees to when enrolling a bank — shown before consent and stored with it."""
    template = getattr(bank, "ssd_template", None)
    applets = ", ".join(
        a.get("name") or a.get("package_aid", "") for a in (template.default_applets if template else [])
    )
    management = (
        "each of its operations authorised by the issuing agency"
        if template is None or template.management == SsdTemplate.Management.DELEGATED
        else "operating under its own authority (Authorized Management)"
    )
    return (
        f"I allow {bank.name} to create its own security domain on my card {card.cin}, "
        f"holding keys only {bank.name} controls, {management}"
        + (f", and to install: {applets}" if applets else "")
        + ". I can remove the bank from my card at any time."
    )


def live_card_of(holder: User, *, exclude: Card | None = None) -> Card | None:
    """The holder's card that still counts (not TERMINATED): a citizen holds one at a time."""
    cards = Card.objects.filter(Card.LIVE, holder=holder)
    if exclude is not None:
        cards = cards.exclude(pk=exclude.pk)
    return cards.first()


def _refuse_second_card(holder: User, *, exclude: Card | None = None) -> None:
    if live_card_of(holder, exclude=exclude) is not None:
        raise ServiceError(
            f"{holder.get_username()} already holds a card; a citizen holds one card at a time",
            field="holder",
            code="duplicate",
        )


@transaction.atomic
def issue_card(
    *,
    agency: Organization,
    holder: User | None = None,
    serial: str = "",
    cin: str = "",
    scp: int = 0x03,
    key_scheme: str = "kdf3",
    emulated: bool = True,
    actor: User | None = None,
) -> Card:
    """Create a card record with its ISD; an emulated card also gets its personalised state file."""
    if not agency.is_agency:
        raise ServiceError("only the agency issues cards", field="agency")
    if holder is not None and holder.memberships.exists():
        raise ServiceError("organisation members cannot hold a citizen card", field="holder")
    if holder is not None:
        _refuse_second_card(holder)
    if scp not in (0x02, 0x03):
        raise ServiceError("SCP must be 02 or 03", field="scp")
    if scp == 0x02 and key_scheme == "kdf3":
        key_scheme = "emv"  # SCP02 keys are 3DES: EMV CPS diversification (KDF3 makes AES keys)
    if key_scheme not in ("kdf3", "emv", "visa2") or (scp == 0x03) != (key_scheme == "kdf3"):
        raise ServiceError("SCP03 cards use kdf3 diversification; SCP02 cards emv or visa2", field="key_scheme")
    cin = normalise_hex(cin, field="cin", min_bytes=4, max_bytes=16) if cin else secrets.token_hex(8).upper()
    serial = serial or f"EC{cin[-12:]}"
    if Card.objects.filter(cin=cin).exists() or Card.objects.filter(serial=serial).exists():
        raise ServiceError("a card with this CIN or serial exists", field="cin", code="duplicate")
    valid_from, valid_until = validity.validity_for(agency)  # the agency's policy (cards.validity)
    try:
        with transaction.atomic():  # a concurrent issuance to the same holder or CIN loses here
            card = Card.objects.create(
                cin=cin,
                serial=serial,
                iin="",
                kdd=secrets.token_hex(10).upper(),
                key_scheme=key_scheme,
                scp=scp,
                scp_i=0x70 if scp == 0x03 else 0x55,
                isd_kvn=0x30 if scp == 0x03 else 0x20,
                holder=holder,
                issued_by=agency,
                emulated=emulated,
                elf_upgrade=emulated,  # the emulated card supports Amendment H unless made without it
                valid_from=valid_from,
                valid_until=valid_until,
            )
    except IntegrityError as exc:
        raise ServiceError(
            "the holder already holds a card, or a card with this CIN or serial exists",
            field="holder",
            code="duplicate",
        ) from exc
    SecurityDomain.objects.create(
        card=card,
        organization=agency,
        aid=ISD_AID,
        is_isd=True,
        privileges=PRIVILEGES_ISD,
        management="am",
        scp=card.scp,
        scp_i=card.scp_i,
        key_kvn=card.isd_kvn,
        lifecycle=SecurityDomain.Lifecycle.PERSONALIZED,
        state=SecurityDomain.State.ACTIVE,
    )
    if emulated:
        card.state_file = str(emulation.personalise(card))
        card.save(update_fields=["state_file"])
    record_event(
        action="card.issued",
        subject_type="card",
        subject_id=card.cin,
        card_cin=card.cin,
        actor=actor,
        actor_org=agency,
        organization=agency,
        details={
            "scp": card.scp,
            "key_scheme": key_scheme,
            "emulated": emulated,
            "holder_assigned": holder is not None,
            "lifecycle": card.lifecycle,
            "isd_aid": ISD_AID,
            "valid_from": valid_from.isoformat(),
            "valid_until": valid_until.isoformat(),
        },
    )
    return card


def refuse_unless_in_use(card: Card, *, fresh: bool = False) -> None:
    """A blocked or terminated card gets no new work, token or enrollment (issue 19): only the
    agency's card status work (``cards.lifecycle``). Read afresh, the caller's copy may be older,
    unless ``fresh``: the caller read the card in this transaction (a second read adds nothing)."""
    if fresh:
        standing: str | None = card.standing
    else:
        standing = Card.objects.filter(pk=card.pk).values_list("standing", flat=True).first()
    if standing is not None and standing != Card.Standing.ACTIVE:
        raise ServiceError(
            f"card {card.cin} is {Card.Standing(standing).label.lower()}: it takes no new work",
            field="card",
            code="state",
        )


# A bank's request on one of its security domains (lock, unlock, key rotation) reads the SD under
# lock with its card, the holder's e-mail address (the work-waiting e-mail) and the owning bank,
# then its open jobs of the kind: prepared statements (ecard.prepared_sql), as the job queue of a
# rollout or a load test runs them many times a second.
_SD_FOR_REQUEST: JoinedRead[SecurityDomain] = JoinedRead(
    SecurityDomain, ("card", "card__holder", "organization"), ("id",), lock=True, only={"card__holder": ("email",)}
)
_OPEN_JOBS_OF_SD: JoinedRead[CardJob] = JoinedRead(CardJob, (), ("card", "security_domain", "kind__in", "state__in"))


def _security_domain_for_request(security_domain: SecurityDomain) -> SecurityDomain:
    sd = _SD_FOR_REQUEST.first(security_domain.pk)
    if sd is None:
        raise SecurityDomain.DoesNotExist(f"security domain {security_domain.pk}")
    return sd


def _open_job_exists(card: Card, *, kinds: tuple[str, ...], security_domain: SecurityDomain | None = None) -> bool:
    if security_domain is not None:
        return _OPEN_JOBS_OF_SD.count(card.pk, security_domain.pk, kinds, CardJob.OPEN_STATES) > 0
    return card.jobs.filter(kind__in=kinds, state__in=CardJob.OPEN_STATES).exists()


def _queue_job(
    *,
    card: Card,
    kind: str,
    organization: Organization,
    actor: User | None,
    security_domain: SecurityDomain | None = None,
    enrollment: Enrollment | None = None,
    params: dict[str, Any] | None = None,
    standing_checked: bool = False,
) -> CardJob:
    if kind != CardJob.Kind.CARD_STATUS and not standing_checked:  # checked by the caller in this transaction
        refuse_unless_in_use(card)
    job = CardJob.objects.create(
        card=card,
        kind=kind,
        organization=organization,
        security_domain=security_domain,
        enrollment=enrollment,
        params=params or {},
        created_by=actor if actor is not None and getattr(actor, "pk", None) else None,
    )
    job_queued.send(sender=CardJob, job=job)  # updates prepares its keys once this commits
    record_event(
        action="job.queued",
        subject_type="card_job",
        subject_id=job.pk,
        card_cin=card.cin,
        actor=actor,
        organization=organization,
        details={"kind": kind, "security_domain": security_domain.aid if security_domain else None},
    )
    holder_emails.work_waiting(job)  # once per batch of waiting work, after commit
    return job


queue_job = _queue_job  # for the apps above cards (updates) that queue their own kinds of work


def ssd_aid_for(bank: Organization) -> str:
    prefixes = bank_aid_prefixes(bank)
    if not prefixes:
        raise ServiceError(f"{bank.name} has no AID range", field="bank")
    template = bank.ssd_template
    aid = prefixes[0] + template.ssd_aid_suffix
    if not 5 <= len(aid) // 2 <= 16:
        raise ServiceError("the bank's SSD AID would not be 5 to 16 bytes", field="bank")
    return aid


@records_refusals(SecurityKind.CONSENT_REFUSED, actor="citizen", organization="bank")
@transaction.atomic
def request_enrollment(
    *, card: Card, bank: Organization, citizen: User, consent_text: str, accepted: bool
) -> Enrollment:
    """A citizen asks for a bank on their card. Creates the pending SSD record and the enroll job."""
    card = Card.objects.select_for_update().get(pk=card.pk)
    if card.holder_id != citizen.pk:
        raise ServiceError("this is not your card", field="card", code="not_holder")
    if not accepted:
        raise ServiceError("consent is required to add a bank", field="accepted", code="no_consent")
    refuse_unless_in_use(card, fresh=True)  # read under lock above
    if card.lifecycle != Card.Lifecycle.SECURED:
        raise ServiceError(f"the card is {card.lifecycle}; banks can only be added to a SECURED card", field="card")
    if validity.is_expired(card):  # renewal stays open to it (updates.renewal.request_renewal)
        raise ServiceError(
            f"the card expired on {card.valid_until}; renew it before adding a bank", field="card", code="expired"
        )
    if not (bank.is_bank and bank.is_active):
        raise ServiceError("not an active bank", field="bank")
    if not hasattr(bank, "ssd_template"):
        raise ServiceError(f"{bank.name} is not ready for enrollment (no SSD template)", field="bank")
    expected = consent_text_for(card, bank)
    if consent_text.strip() != expected:
        raise ServiceError("the consent text does not match what would be installed", field="consent_text")
    return enroll_bank(card=card, bank=bank, citizen=citizen, consent_text=expected, consented_at=timezone.now())


def enroll_bank(
    *,
    card: Card,
    bank: Organization,
    citizen: User,
    consent_text: str,
    consented_at: Any,
    default_applets: list[dict[str, Any]] | None = None,
    carried_from: str = "",
) -> Enrollment:
    """The enrollment record, the bank's pending SSD and its enroll job, once consent is settled
    (in the caller's transaction): by :func:`request_enrollment`, or for a replacement card by
    ``cards.lifecycle.replace_card`` (``default_applets``: the old card's applets at their
    releases instead of the template's; ``carried_from``: the old card's CIN)."""
    aid = ssd_aid_for(bank)
    if card.security_domains.filter(aid=aid).exclude(state=SecurityDomain.State.REMOVED).exists():
        raise ServiceError(f"{bank.name} is already on this card", field="bank", code="duplicate")
    template = bank.ssd_template
    try:
        with transaction.atomic():
            enrollment = Enrollment.objects.create(
                card=card, bank=bank, consent_text=consent_text, consented_at=consented_at, requested_by=citizen
            )
    except IntegrityError as exc:
        raise ServiceError(f"{bank.name} is already on this card", field="bank", code="duplicate") from exc
    SecurityDomain.objects.filter(card=card, aid=aid, state=SecurityDomain.State.REMOVED).delete()
    privileges = Privileges.from_bytes(
        bytes.fromhex(
            PRIVILEGES_SSD_DM if template.management == SsdTemplate.Management.DELEGATED else PRIVILEGES_SSD_AM
        )
    )
    verifies_dap = bank_dap_point(bank) is not None
    if verifies_dap:  # the bank signs its code: its SSD verifies each load's DAP (§11.1.2)
        privileges |= Privileges.DAP_VERIFICATION
    sd = SecurityDomain.objects.create(
        card=card,
        organization=bank,
        aid=aid,
        privileges=privileges.to_bytes().hex().upper(),
        management=template.management,
        scp=template.scp,
        scp_i=template.scp_i,
        state=SecurityDomain.State.PENDING,
    )
    enrollment.security_domain = sd
    enrollment.save(update_fields=["security_domain"])
    details: dict[str, Any] = {"bank": bank.slug, "ssd_aid": aid}
    if carried_from:
        details["carried_from"] = carried_from
    record_event(
        action="enrollment.requested",
        subject_type="enrollment",
        subject_id=enrollment.pk,
        card_cin=card.cin,
        actor=citizen,
        organization=bank,
        details=details,
    )
    params: dict[str, Any] = {
        "ssd_aid": aid,
        "default_applets": template.default_applets if default_applets is None else default_applets,
        "dap_key": verifies_dap,
    }
    if carried_from:
        params["carried_from"] = carried_from
    _queue_job(
        card=card,
        kind=CardJob.Kind.ENROLL_BANK,
        organization=bank,
        actor=citizen,
        security_domain=sd,
        enrollment=enrollment,
        params=params,
        standing_checked=True,
    )
    return enrollment


@transaction.atomic
def request_removal(*, enrollment: Enrollment, actor: User) -> CardJob:
    """Remove a bank from a card: DELETE its SSD with related objects at the next presentation."""
    enrollment = (
        Enrollment.objects.select_for_update(of=("self",))
        .select_related("card", "bank", "security_domain")
        .get(pk=enrollment.pk)
    )
    refuse_unless_in_use(enrollment.card)
    if enrollment.status == Enrollment.Status.REQUESTED:
        # Not on the card yet: cancel the pending enrollment instead.
        enrollment.jobs.filter(state=CardJob.State.PENDING).update(
            state=CardJob.State.CANCELLED, finished_at=timezone.now()
        )
    elif enrollment.status != Enrollment.Status.ACTIVE:
        raise ServiceError(f"the enrollment is {enrollment.status}", field="enrollment", code="state")
    if _open_job_exists(enrollment.card, kinds=(CardJob.Kind.REMOVE_BANK,), security_domain=enrollment.security_domain):
        raise ServiceError("removal is already pending", code="duplicate")
    enrollment.status = Enrollment.Status.REMOVAL_REQUESTED
    enrollment.save(update_fields=["status", "updated_at"])
    sd = enrollment.security_domain
    if sd is not None:
        sd.state = SecurityDomain.State.REMOVING
        sd.save(update_fields=["state", "updated_at"])
    record_event(
        action="enrollment.removal_requested",
        subject_type="enrollment",
        subject_id=enrollment.pk,
        card_cin=enrollment.card.cin,
        actor=actor,
        organization=enrollment.bank,
        details={"bank": enrollment.bank.slug, "ssd_aid": sd.aid if sd else ""},
    )
    return _queue_job(
        card=enrollment.card,
        kind=CardJob.Kind.REMOVE_BANK,
        organization=enrollment.bank,
        actor=actor,
        security_domain=sd,
        enrollment=enrollment,
        params={"ssd_aid": sd.aid if sd else ""},
    )


def next_kvn(sd: SecurityDomain) -> int:
    """The next key version in the SD's SCP range (DESIGN.md §4: SCP02 20-2F, SCP03 30-3F), after
    the initial set (x0), wrapping from xF back to x1."""
    base = 0x20 if sd.scp == 0x02 else 0x30  # SCP03, or SCP03 keys of an SD installed for SCP11
    current = sd.key_kvn if sd.key_kvn is not None else base
    return current + 1 if current < base + 0x0F else base + 1


@transaction.atomic
def request_key_rotation(*, security_domain: SecurityDomain, actor: User) -> CardJob:
    """Queue a PUT KEY rotation of an SD's key set (new keys generated in custody when the job runs)."""
    sd = _security_domain_for_request(security_domain)
    refuse_unless_in_use(sd.card, fresh=True)  # read with the SD just above
    if sd.state != SecurityDomain.State.ACTIVE:
        raise ServiceError(f"the security domain is {sd.state}", code="state")
    if sd.lifecycle == SecurityDomain.Lifecycle.LOCKED:
        # a locked SD cannot be selected (GP 2.3.1 §5.3.2): the job could only fail at the card
        raise ServiceError("the security domain is locked: unlock it before rotating its keys", code="state")
    if _open_job_exists(sd.card, kinds=(CardJob.Kind.ROTATE_KEYS,), security_domain=sd):
        raise ServiceError("a key rotation is already pending for this security domain", code="duplicate")
    return _queue_job(
        card=sd.card,
        kind=CardJob.Kind.ROTATE_KEYS,
        organization=sd.organization,
        actor=actor,
        security_domain=sd,
        params={"sd_aid": sd.aid, "from_kvn": sd.key_kvn, "to_kvn": next_kvn(sd)},
        standing_checked=True,
    )


@transaction.atomic
def request_sd_lock(*, security_domain: SecurityDomain, lock: bool, actor: User) -> CardJob:
    """Queue SET STATUS to lock or unlock a bank's SSD (GP Card Spec 2.3.1 §11.10)."""
    sd = _security_domain_for_request(security_domain)
    if sd.is_isd:
        raise ServiceError("the ISD is locked through the card lifecycle, not here", code="isd")
    refuse_unless_in_use(sd.card, fresh=True)  # read with the SD just above
    if sd.state != SecurityDomain.State.ACTIVE:
        raise ServiceError(f"the security domain is {sd.state}", code="state")
    already = sd.lifecycle == SecurityDomain.Lifecycle.LOCKED
    if lock == already:
        raise ServiceError("the security domain is already " + ("locked" if lock else "unlocked"), code="state")
    kind = CardJob.Kind.LOCK_SD if lock else CardJob.Kind.UNLOCK_SD
    if _open_job_exists(sd.card, kinds=(CardJob.Kind.LOCK_SD, CardJob.Kind.UNLOCK_SD), security_domain=sd):
        raise ServiceError("a lock change is already pending for this security domain", code="duplicate")
    return _queue_job(
        card=sd.card,
        kind=kind,
        organization=sd.organization,
        actor=actor,
        security_domain=sd,
        params={"sd_aid": sd.aid},
        standing_checked=True,
    )


@transaction.atomic
def assign_holder(*, card: Card, holder: User, actor: User) -> Card:
    card = Card.objects.select_for_update().get(pk=card.pk)
    if card.holder_id is not None and card.holder_id != holder.pk:
        raise ServiceError("the card already has a holder", field="holder", code="state")
    if card.lifecycle == Card.Lifecycle.TERMINATED:
        raise ServiceError("the card is TERMINATED", field="card", code="state")
    if holder.memberships.exists():
        raise ServiceError("organisation members cannot hold a citizen card", field="holder")
    if card.holder_id == holder.pk:
        return card
    _refuse_second_card(holder, exclude=card)
    card.holder = holder
    try:
        with transaction.atomic():  # a concurrent assignment of the same holder loses here
            card.save(update_fields=["holder"])
    except IntegrityError as exc:
        raise ServiceError(f"{holder.get_username()} already holds a card", field="holder", code="duplicate") from exc
    record_event(
        action="card.holder_assigned", subject_type="card", subject_id=card.cin, card_cin=card.cin, actor=actor
    )
    return card


@transaction.atomic
def reset_auth_failures(*, security_domain: SecurityDomain, actor: User) -> SecurityDomain:
    """After an operator has investigated failed authentications (wrong keys on record, a tampering
    relay), allow the platform to open channels with this SD again. Audited."""
    sd = SecurityDomain.objects.select_for_update(of=("self",)).select_related("card").get(pk=security_domain.pk)
    previous = sd.auth_failures
    if previous == 0:
        raise ServiceError("no failed authentications to clear", code="state")
    sd.auth_failures = 0
    sd.save(update_fields=["auth_failures", "updated_at"])
    auth_failures_cleared.send(sender=SecurityDomain, security_domain=sd)
    record_event(
        action="secure_channel.failures_cleared",
        subject_type="security_domain",
        subject_id=sd.aid,
        card_cin=sd.card.cin,
        actor=actor,
        organization=sd.organization,
        details={"previous_failures": previous},
    )
    return sd
