"""The agency's Delegated Management policy: it signs a token only when the operation is allowed.

GP 2.3.1 §9.2.2 / Annex C: an SSD with the DM privilege may LOAD, INSTALL, DELETE or EXTRADITE
only with a token signed by the card issuer. The platform signs on the agency's behalf after
these checks; every refusal is an audit event.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from audit.services import record_event
from cards.models import Card, SecurityDomain
from gp import commands
from gp.errors import GPError
from issuers.services import aid_in_bank_range
from updates import release_gate
from updates.models import Release, Rollout


class TokenDenied(Exception):
    """Policy refused to sign a Delegated Management token."""


INS_INSTALL = 0xE6
INS_DELETE = 0xE4
# In the refusal when a rollout job's rollout is paused or cancelled (rollouts tell it from a card failure).
ROLLOUT_INACTIVE = "rollout not active"


def _deny(card: Card, sd: SecurityDomain, operation: str, reason: str) -> TokenDenied:
    # The refusal is logged even though the surrounding exchange goes on (a savepoint keeps it
    # independent of the caller's later rollback of its own work).
    with transaction.atomic():
        record_event(
            action="token.denied",
            subject_type="security_domain",
            subject_id=sd.aid,
            card_cin=card.cin,
            organization=sd.organization,
            outcome="denied",
            reason=reason,
            actor_type="system",
            details={"operation": operation},
        )
    return TokenDenied(f"token refused for {operation}: {reason}")


def command_data(command: bytes) -> bytes:
    """The data field of a plain C-APDU (ISO 7816-4 §5.1: short or extended Lc), without Le."""
    if len(command) <= 5:
        return b""
    if command[4] == 0 and len(command) >= 7:
        length = int.from_bytes(command[5:7], "big")
        return bytes(command[7 : 7 + length])
    return bytes(command[5 : 5 + command[4]])


def describe(command: bytes) -> tuple[str, str]:
    """(operation, subject AID) of a plain INSTALL/DELETE command, for policy and audit."""
    ins, p1 = command[1], command[2]
    data = command_data(command)
    try:
        if ins == INS_INSTALL:
            parsed = commands.parse_install(p1, data)
            aid = parsed.app_aid or parsed.elf_aid
            return f"install:{parsed.kind}", aid.hex().upper()
        if ins == INS_DELETE:
            return "delete", commands.parse_delete(data).aid.hex().upper()
    except GPError:
        pass
    return f"ins:{ins:02X}", ""


def authorize(*, card: Card, security_domain: SecurityDomain, command: bytes) -> None:
    """Raise :class:`TokenDenied` unless the agency's policy allows this operation now."""
    operation, aid = describe(command)
    sd = security_domain
    bank = sd.organization
    check_security_domain(card=card, security_domain=sd, operation=operation)
    if not aid:
        raise _deny(card, sd, operation, "not a card content command the agency signs tokens for")
    if not aid_in_bank_range(bank, aid):
        raise _deny(card, sd, operation, f"{aid} is outside {bank.name}'s AID range")
    if operation == "install:load":
        # The load file hash in the command names exactly one release: it must be approved (not revoked).
        lfdb_hash = _load_hash(command)
        release = (
            Release.objects.filter(bank=bank, package_aid=aid, lfdb_sha256=lfdb_hash.hex()).first()
            if len(lfdb_hash) == 32
            else None
        )
        if release is None:
            raise _deny(card, sd, operation, f"no release of {aid} with this load file hash")
        if release.state != Release.State.APPROVED:
            raise _deny(card, sd, operation, f"release {aid} v{release.package_version} is {release.state}")


def _load_hash(command: bytes) -> bytes:
    try:
        return commands.parse_install(command[2], command_data(command)).lfdb_hash or b""
    except GPError:
        return b""


def check_job(*, card: Card, security_domain: SecurityDomain, job: Any, operation: str) -> None:
    """What the job itself must satisfy: the bank whose work it is owns the SD; every release it
    installs is approved; a rollout's job runs only while its rollout is active."""
    sd = security_domain
    if job.organization_id != sd.organization_id:
        raise _deny(card, sd, operation, "the security domain belongs to another bank than the job's")

    release_ids = [
        spec.get("release")
        for key in ("packages", "applets", "default_applets")
        for spec in (job.params.get(key) or [])
    ]
    for release in Release.objects.filter(pk__in=[r for r in release_ids if r is not None]):
        if release.bank_id != sd.organization_id:
            raise _deny(card, sd, operation, f"release {release.package_aid} is not {sd.organization.name}'s")
        if release.state != Release.State.APPROVED:
            raise _deny(
                card, sd, operation, f"release {release.package_aid} v{release.package_version} is {release.state}"
            )
        release_gate.obtain_bank_signature(release)  # a missing one is asked of the bank's key service
        refusal = release_gate.deployment_refusal(release)  # unsigned where the cards verify a DAP
        if refusal is not None:
            raise _deny(card, sd, operation, refusal)
    rollout_id = job.params.get("rollout")
    if rollout_id is not None:
        rollout = Rollout.objects.filter(pk=rollout_id).first()
        # A job an earlier presentation already began (attempts > 1 now) may finish, so that no
        # card is left between two versions; a job not yet begun waits for an active rollout.
        if rollout is None or (rollout.state != Rollout.State.RUNNING and job.attempts <= 1):
            state = rollout.state if rollout is not None else "deleted"
            raise _deny(card, sd, operation, f"{ROLLOUT_INACTIVE}: rollout {rollout_id} is {state}")


def check_security_domain(
    *, card: Card, security_domain: SecurityDomain, operation: str, job: Any | None = None
) -> None:
    """The card and the bank's SD are in a state where the agency authorises the bank's work (and,
    given the job about to run, that the job may run: :func:`check_job`)."""
    sd = security_domain
    bank = sd.organization
    if card.lifecycle != Card.Lifecycle.SECURED:
        raise _deny(card, sd, operation, f"the card is {card.lifecycle}")
    if card.standing != Card.Standing.ACTIVE:  # blocked or terminated: no token for it (issue 19)
        raise _deny(card, sd, operation, f"the card is {card.standing}")
    if not bank.is_bank or not bank.is_active:
        raise _deny(card, sd, operation, "the security domain's owner is not an active bank")
    if sd.card_id != card.pk or sd.state == SecurityDomain.State.REMOVED:
        raise _deny(card, sd, operation, "the security domain is not on this card")
    if sd.lifecycle == SecurityDomain.Lifecycle.LOCKED:
        raise _deny(card, sd, operation, "the security domain is locked")
    if job is not None:
        check_job(card=card, security_domain=sd, job=job, operation=operation)
