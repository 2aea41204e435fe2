"""Write operations of the updates app: agent credentials, relay sessions, releases."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from audit.services import events_together, record_event, relayed_by
from cards import holder_emails
from cards.models import CardJob
from ecard.errors import ServiceError
from ecard.prepared_sql import FieldsUpdate, JoinedRead, RowInsert
from gp.errors import LocalProtocolError
from gp.scp11.constants import SCP11_ID
from issuers.keyvault import CustodyError
from issuers.models import Membership, Organization
from issuers.roles import principal
from updates.engine.protocol import InFlight, check_answers, parse_answers
from updates.models import TERMINAL_ORG_KINDS, AgentCredential, CardSession, WorkerHeartbeat
from updates.ota import (
    BANK_KVN,
    MAX_ATTEMPTS,
    Batch,
    SessionEngine,
    SessionRejected,
    ensure_bank_keyset,
    fail_job,
    keyset_for,
    retry_job,
)
from updates.presentation import PresentationRefused, presentable_job_ids

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "eca"  # noqa: S105 - a token prefix, not a secret
SESSION_IDLE_TIMEOUT = timedelta(seconds=int(getattr(settings, "ECARD_SESSION_IDLE_SECONDS", 120)))
MAX_BATCH_RESPONSES = 2048


@transaction.atomic
def record_worker_heartbeat(*, token: str, hostname: str) -> WorkerHeartbeat:
    """Record that a worker ran; idempotent per token (a redelivered task writes once)."""
    heartbeat, _created = WorkerHeartbeat.objects.get_or_create(token=token, defaults={"hostname": hostname})
    return heartbeat


# ---------------------------------------------------------------------------------------------
# agent credentials: a card holder's devices and an organisation's terminals

KEY_ID = re.compile(r"[0-9a-f]{1,16}")
# Seconds a looked-up credential is trusted from the cache. Revocation, an organisation's
# suspension and a user's deactivation drop the entry at once (on commit); the time-to-live bounds
# what a process whose cache missed that (locmem: another process) may still accept.
CREDENTIAL_CACHE_SECONDS = int(getattr(settings, "ECARD_CREDENTIAL_CACHE_SECONDS", 5))


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_token() -> tuple[str, str]:
    """A fresh (key id, secret) pair; the token is ``eca_<key id>_<secret>``."""
    return secrets.token_hex(6), secrets.token_urlsafe(24)


@transaction.atomic
def issue_agent_credential(*, user: User, name: str) -> tuple[AgentCredential, str]:
    """A new device credential for a card holder. The token is shown once; only its hash is kept."""
    if user.memberships.exists() or not user.cards.exists():
        raise ServiceError("agent credentials are for card holders", field="user")
    name = (name or "device").strip()[:100]
    key_id, secret = _new_token()
    credential = AgentCredential.objects.create(user=user, name=name, key_id=key_id, secret_hash=_hash_secret(secret))
    record_event(
        action="agent_credential.issued",
        subject_type="agent_credential",
        subject_id=key_id,
        actor=user,
        details={"name": name},
    )
    return credential, f"{TOKEN_PREFIX}_{key_id}_{secret}"


def _require_org_admin(actor: AbstractBaseUser, organization: Organization, what: str) -> None:
    if not principal(actor).has_role(organization.pk, Membership.Role.ADMIN):
        raise ServiceError(f"only an admin of {organization.name} may {what}", field="organization", code="forbidden")


@transaction.atomic
def issue_terminal_credential(*, organization: Organization, actor: User, name: str) -> tuple[AgentCredential, str]:
    """A new terminal credential for an organisation (an ATM, a branch or agency kiosk), issued by
    one of its admins. It may present any card and runs only the work the card's holder consented
    to (:mod:`updates.presentation`). The token is shown once; only its hash is kept."""
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    _require_org_admin(actor, organization, "issue its terminal credentials")
    if organization.kind not in TERMINAL_ORG_KINDS:
        raise ServiceError("terminal credentials are for the agency and banks", field="organization")
    if not organization.is_active:
        raise ServiceError(f"{organization.name} is suspended", field="organization", code="state")
    name = (name or "").strip()[:100]
    if not name:
        raise ServiceError("name the terminal (e.g. 'ATM 12, Main Street')", field="name")
    key_id, secret = _new_token()
    credential = AgentCredential.objects.create(
        organization=organization, issued_by=actor, name=name, key_id=key_id, secret_hash=_hash_secret(secret)
    )
    record_event(
        action="terminal_credential.issued",
        subject_type="agent_credential",
        subject_id=key_id,
        actor=actor,
        actor_org=organization,
        organization=organization,
        details={"name": name},
    )
    return credential, f"{TOKEN_PREFIX}_{key_id}_{secret}"


@transaction.atomic
def revoke_agent_credential(*, credential: AgentCredential, actor: AbstractBaseUser | None) -> AgentCredential:
    """Revoke a credential: refused from now on (the cache entry is dropped when this commits),
    its open sessions are rejected at once."""
    credential = (
        AgentCredential.objects.select_for_update(of=("self",)).select_related("organization").get(pk=credential.pk)
    )
    if credential.revoked_at is None:
        credential.revoked_at = timezone.now()
        credential.save(update_fields=["revoked_at"])
        CardSession.objects.filter(credential=credential, state=CardSession.State.OPEN).update(
            state=CardSession.State.REJECTED, closed_reason="credential revoked", sealed_channel=None
        )
        terminal = credential.organization
        record_event(
            action="terminal_credential.revoked" if terminal is not None else "agent_credential.revoked",
            subject_type="agent_credential",
            subject_id=credential.key_id,
            actor=actor,
            actor_org=terminal,
            organization=terminal,
        )
    forget_credentials([credential.key_id])
    return credential


def revoke_terminal_credential(*, credential: AgentCredential, actor: User) -> AgentCredential:
    """An organisation admin revokes one of its terminals."""
    if credential.organization is None:
        raise ServiceError("not a terminal credential", field="credential")
    _require_org_admin(actor, credential.organization, "revoke its terminal credentials")
    return revoke_agent_credential(credential=credential, actor=actor)


def _cache_key(key_id: str) -> str:
    return f"ecard:agent-credential:{key_id}"


def forget_credentials(key_ids: Iterable[str]) -> None:
    """Drop cached credentials now and again once the current transaction commits (a lookup
    between the two could cache the row as it was before the change)."""
    key_ids = list(key_ids)
    keys = [_cache_key(k) for k in key_ids]
    if not keys:
        return

    def drop() -> None:
        for key_id in key_ids:
            _local_credentials.pop(key_id, None)
        try:
            cache.delete_many(keys)
        except Exception:  # the cache is an optimisation: the TTL still bounds a stale entry
            logger.warning("could not drop %d cached agent credential(s)", len(keys), exc_info=True)

    drop()
    transaction.on_commit(drop)


# What the cache keeps of a usable credential: plain values (no pickled model instances), enough to
# check a token and to build the credential the relay needs without a query.
_CACHED_FIELDS = (
    "id",
    "key_id",
    "secret_hash",
    "revoked_at",
    "user_id",
    "user__is_active",
    "organization_id",
    "organization__slug",
    "organization__is_active",
)


def _usable(value: dict[str, Any]) -> bool:
    """Not revoked, and its holder's account (device) or its organisation (terminal) is active."""
    if value["revoked_at"] is not None:
        return False
    if value["organization_id"] is not None:
        return bool(value["organization__is_active"])
    return value["user_id"] is not None and bool(value["user__is_active"])


# In front of the shared cache, each process keeps what it looked up for a second: a device's
# session is three requests in a second or two, and a terminal's many more. Revocation in this
# process drops it at once (forget_credentials); another process's copy lives at most this long.
LOCAL_CREDENTIAL_SECONDS = float(getattr(settings, "ECARD_LOCAL_CREDENTIAL_SECONDS", 1.0))
_local_credentials: dict[str, tuple[float, dict[str, Any]]] = {}


def _lookup(key_id: str) -> dict[str, Any] | None:
    """The credential a key id names, as plain values, through the process's copy and the cache
    (only usable credentials are kept)."""
    now = time.monotonic()
    local = _local_credentials.get(key_id)
    if local is not None and local[0] > now:
        return local[1]
    key = _cache_key(key_id)
    try:
        cached = cache.get(key)
    except Exception:  # a cache outage costs a query, never a refusal
        logger.warning("credential cache unavailable", exc_info=True)
        cached = None
    if isinstance(cached, dict) and cached.get("key_id") == key_id:
        _keep_locally(key_id, cached, now)
        return cached
    value = AgentCredential.objects.filter(key_id=key_id).values(*_CACHED_FIELDS).first()
    if value is not None and _usable(value):
        try:
            cache.set(key, value, CREDENTIAL_CACHE_SECONDS)
        except Exception:
            logger.warning("credential cache unavailable", exc_info=True)
        _keep_locally(key_id, value, now)
    return value


def _keep_locally(key_id: str, value: dict[str, Any], now: float) -> None:
    if LOCAL_CREDENTIAL_SECONDS <= 0:
        return
    if len(_local_credentials) >= 10_000:  # bounded: drop the expired, or all if none is
        for stale in [k for k, (until, _v) in _local_credentials.items() if until <= now] or list(_local_credentials):
            _local_credentials.pop(stale, None)
    _local_credentials[key_id] = (now + LOCAL_CREDENTIAL_SECONDS, value)


def _partial(model: Any, values: dict[str, Any]) -> Any:
    """An instance of ``model`` as if read from the database with only ``values`` (attribute
    names): the other fields are deferred, loaded on first use."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(None, names, [values[name] for name in names])


def _credential_of(value: dict[str, Any]) -> AgentCredential:
    """The credential model of a looked-up value, built without a query: its other fields (name,
    dates) and a device's user load lazily if a caller reads them; a terminal's organisation
    carries its id, slug and state (its other fields load lazily too)."""
    credential: AgentCredential = _partial(
        AgentCredential,
        {name: value[name] for name in ("id", "key_id", "secret_hash", "revoked_at", "user_id", "organization_id")},
    )
    if value["organization_id"] is not None:
        credential.organization = _partial(
            Organization,
            {
                "id": value["organization_id"],
                "slug": value["organization__slug"],
                "is_active": value["organization__is_active"],
            },
        )
    return credential


def authenticate_agent(token: str) -> AgentCredential | None:
    """The active credential a token names, or None (constant-time secret comparison).

    Looked up through the cache (Django's cache framework: Redis in production, per process by
    default) for ``CREDENTIAL_CACHE_SECONDS``; revocation and suspension drop the entry at once."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not KEY_ID.fullmatch(parts[1]):
        return None
    value = _lookup(parts[1])
    if value is None or not hmac.compare_digest(value["secret_hash"], _hash_secret(parts[2])):
        return None
    if not _usable(value):
        return None
    return _credential_of(value)


def forget_organization_credentials(organization_id: int) -> None:
    """An organisation was suspended (or changed): its terminals are looked up afresh."""
    forget_credentials(AgentCredential.objects.filter(organization_id=organization_id).values_list("key_id", flat=True))


def close_terminal_sessions(organization_id: int, reason: str) -> int:
    """Reject the open sessions of an organisation's terminals (as a revocation rejects a
    credential's), in the caller's transaction: the change that calls it is its audit entry."""
    return CardSession.objects.filter(credential__organization_id=organization_id, state=CardSession.State.OPEN).update(
        state=CardSession.State.REJECTED, closed_reason=reason, sealed_channel=None
    )


def forget_user_credentials(user_id: int) -> None:
    """A user was deactivated (or changed): their devices are looked up afresh."""
    forget_credentials(AgentCredential.objects.filter(user_id=user_id).values_list("key_id", flat=True))


def relay_identity(credential: AgentCredential) -> AbstractContextManager[None]:
    """Inside it, every audit entry names the terminal that relays the card work (its key id and
    organisation: ``audit.services.relayed_by``). A device credential adds nothing: its entries
    are the holder's own card's."""
    organization = credential.organization
    if organization is None:
        return nullcontext()
    return relayed_by(
        actor_id=f"terminal:{credential.key_id}",
        organization=organization,
        details={"terminal": credential.key_id, "organization": organization.slug},
    )


# ---------------------------------------------------------------------------------------------
# relay sessions (DESIGN.md §6)


@dataclass
class RelayAnswer:
    session: CardSession
    batch: Batch

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "session": str(self.session.id),
            "exchange": self.session.exchange,
            "state": self.session.state,
            "commands": self.batch.commands,
            "done": self.batch.done,
            "progress": self.batch.progress,
        }
        if self.batch.done:
            body["result"] = self.batch.result
            if self.session.card is not None:  # the card that identified itself (a terminal's log line)
                body["result"] = {**self.batch.result, "card": self.session.card.cin}
        return body


def _expires() -> Any:
    return timezone.now() + SESSION_IDLE_TIMEOUT


def _reject(session: CardSession, reason: str) -> None:
    """Close a session for an integrity or protocol failure; its jobs go back to pending."""
    session.state = CardSession.State.REJECTED
    session.closed_reason = reason
    session.sealed_channel = None
    _save_session(session)
    if session.card_id:
        for job in CardJob.objects.filter(card_id=session.card_id, state=CardJob.State.RUNNING):
            if job.attempts >= MAX_ATTEMPTS:
                fail_job(job, f"gave up after {job.attempts} attempts: {reason}")
            else:
                retry_job(job, reason)
    record_event(
        action="session.rejected",
        subject_type="card_session",
        subject_id=str(session.id),  # record_event stores str(subject_id)
        card_cin=session.card.cin if session.card is not None else "",
        outcome="failure",
        reason=reason,
        actor_type="agent",
    )


def _apply(session: CardSession, batch: Batch) -> RelayAnswer:
    session.exchange += 1
    session.round_trips += 1
    if session.mode == CardSession.Mode.APDU and not batch.done:
        session.engine_state["queue"] = batch.commands
        session.engine_state["collected"] = []
        batch = Batch(commands=batch.commands[:1], progress=batch.progress)
    if batch.done:
        session.state = CardSession.State.DONE
        session.closed_reason = ""
        _pending_for_presenter(session, batch)
        record_event(
            action="session.done",
            subject_type="card_session",
            subject_id=str(session.id),  # record_event stores str(subject_id)
            card_cin=session.card.cin if session.card is not None else "",
            actor_type="agent",
            details={"round_trips": session.round_trips, "apdus": session.apdus, **batch.result},
        )
        if session.card is not None:  # the holder hears once per session what it did (if anything)
            holder_emails.work_done_after_commit(
                session.card, session=str(session.id), finished=batch.result.get("jobs", [])
            )
    session.expires_at = _expires()
    _save_session(session)
    return RelayAnswer(session, batch)


# What an exchange may change in a session row (the credential, mode and creation time never change).
_SESSION_FIELDS = (
    "card",
    "state",
    "exchange",
    "engine_state",
    "sealed_channel",
    "sealed_by",
    "round_trips",
    "apdus",
    "closed_reason",
    "updated_at",
    "expires_at",
)


_SESSION_UPDATE: FieldsUpdate[CardSession] = FieldsUpdate(CardSession, _SESSION_FIELDS)
_SESSION_INSERT: RowInsert[CardSession] = RowInsert(CardSession)


def _save_session(session: CardSession) -> None:
    """Write the session: INSERT for one opened in this exchange, else one UPDATE of the fields an
    exchange changes."""
    if session._state.adding:
        _SESSION_INSERT.insert(session)
    else:
        _SESSION_UPDATE.save(session)


def _pending_for_presenter(session: CardSession, batch: Batch) -> None:
    """A terminal is told only of the pending work it may run (``pending``, so its agent opens
    another session only for that); the rest waits for the holder's own device
    (``waiting_for_holder``)."""
    if session.card is None or session.credential.organization_id is None or "pending" not in batch.result:
        return
    try:
        runnable = len(presentable_job_ids(session.credential, session.card))
    except PresentationRefused:
        runnable = 0  # revoked or suspended since the card was identified
    pending = int(batch.result["pending"])
    batch.result = {**batch.result, "pending": min(runnable, pending), "waiting_for_holder": max(pending - runnable, 0)}


# A credential's "last used" time is kept to the minute: a process writes it at most once a minute
# per credential (a terminal opens sessions many times a second; one UPDATE each would be waste).
LAST_USED_RESOLUTION = timedelta(seconds=60)
_last_use_written: dict[int, Any] = {}


def _note_use(credential: AgentCredential) -> None:
    now = timezone.now()
    written = _last_use_written.get(credential.pk)
    if written is not None and now - written < LAST_USED_RESOLUTION:
        return
    AgentCredential.objects.filter(pk=credential.pk).update(last_used_at=now)
    if len(_last_use_written) > 10_000:  # bounded: a process serving many devices forgets the oldest
        _last_use_written.clear()
    _last_use_written[credential.pk] = now


def open_session(*, credential: AgentCredential, mode: str = CardSession.Mode.BATCH) -> RelayAnswer:
    if mode not in CardSession.Mode.values:
        raise ServiceError("mode must be batch or apdu", field="mode")
    try:
        with relay_identity(credential), transaction.atomic(), events_together():
            _note_use(credential)
            # Inserted once, with the first batch's state (_apply): its id is made here, not by the database.
            session = CardSession(credential=credential, mode=mode, expires_at=_expires())
            engine = SessionEngine(session)
            batch = engine.start()
            session.engine_state = engine.state
            return _apply(session, batch)
    except (LocalProtocolError, CustodyError) as exc:
        # An engine bug (logged where it happened) or keys the platform cannot open; the session
        # was never committed.
        if isinstance(exc, CustodyError):
            _log_custody_failure(exc, None)
        raise ServiceError(PLATFORM_FAULT, code="unavailable") from None


def _check_responses(session: CardSession, responses: list[str]) -> list[bytes]:
    """The responses must answer the batch in flight in order: all expected but possibly the last,
    and a short list only when its last status word was unexpected (the agent stops there).
    The rules are the engine's (``updates.engine.protocol.parse_answers``, ``check_answers``)."""
    raw = parse_answers(responses, limit=MAX_BATCH_RESPONSES)
    if session.mode == CardSession.Mode.APDU:
        return raw  # checked one by one in _apdu_mode_step
    check_answers([InFlight.from_json(meta).expect for meta in session.engine_state.get("sent", [])], raw)
    return raw


def exchange(*, session_id: Any, credential: AgentCredential, number: int, responses: list[str]) -> RelayAnswer:
    """Take the agent's responses to batch ``number`` and answer with the next batch.

    A replayed, reordered, truncated or altered exchange closes the session (409); its jobs stay
    pending and resume at the card's next presentation. A session idle past its deadline is
    closed, and that is committed, before the 409 says so.
    """
    try:
        # the exchange's audit entries: one INSERT, each naming the relaying terminal if any
        with relay_identity(credential), transaction.atomic(), events_together():
            answer = _exchange_locked(session_id=session_id, credential=credential, number=number, responses=responses)
    except (LocalProtocolError, CustodyError) as exc:
        # The platform's own failure: the engine misused gp (a bug, logged by the engine), or it
        # could not open its keys (a master key or HSM that does not match the database, a KEK
        # gone). What the exchange did is rolled back; the session ends without blaming the card
        # or the relay.
        if isinstance(exc, CustodyError):
            _log_custody_failure(exc, session_id)
        with relay_identity(credential):
            _close_after_platform_fault(session_id)
        raise ServiceError(PLATFORM_FAULT, code="unavailable") from None
    if answer is None:
        raise ServiceError("the session expired", code="state")
    return answer


# The session row under lock, with its card (the card's issuer, and its holder's e-mail address
# only) and the organisation whose KEK sealed its channel state: the first read of every exchange,
# as a prepared statement.
_SESSION_FOR_UPDATE: JoinedRead[CardSession] = JoinedRead(
    CardSession,
    ("card", "card__issued_by", "card__holder", "sealed_by"),
    ("id", "credential"),
    lock=True,
    only={"card__holder": ("email",)},
)


def _exchange_locked(
    *, session_id: Any, credential: AgentCredential, number: int, responses: list[str]
) -> RelayAnswer | None:
    """The exchange inside its transaction; None when the session had expired (now closed)."""
    session = _SESSION_FOR_UPDATE.first(session_id, credential.pk)
    if session is None:
        raise ServiceError("no such session", code="not_found")
    session.credential = credential  # the row names it (filtered above): the authenticated one
    if session.state != CardSession.State.OPEN:
        raise ServiceError(f"the session is {session.state}", code="state")
    if session.expires_at < timezone.now():
        _expire(session)
        return None
    try:
        if number != session.exchange:
            raise SessionRejected(f"exchange {number} out of order (expected {session.exchange})")
        raw = _check_responses(session, responses)
        session.apdus += len(raw)
        if session.mode == CardSession.Mode.APDU:
            answer = _apdu_mode_step(session, raw)
            if answer is not None:
                return answer
            raw = [bytes.fromhex(r) for r in session.engine_state.pop("collected")]
            session.engine_state.pop("queue", None)
        # No savepoint here: what the engine recorded before a rejection (a failed
        # authentication count, verified receipts, audit entries) must stay.
        engine = SessionEngine(session)
        batch = engine.advance(raw)
        session.engine_state = engine.state
        return _apply(session, batch)
    except SessionRejected as exc:
        _reject(session, str(exc))
        return RelayAnswer(session, Batch(commands=[], done=True, result={"error": str(exc)}))


def _apdu_mode_step(session: CardSession, raw: list[bytes]) -> RelayAnswer | None:
    """Per-APDU mode (benchmarking only): hand out the batch one command per round trip."""
    if len(raw) != 1:
        raise SessionRejected("one response per exchange in per-APDU mode")
    queue = session.engine_state["queue"]
    collected = session.engine_state["collected"]
    collected.append(raw[0].hex())
    command = queue[len(collected) - 1]
    sw = f"{int.from_bytes(raw[0][-2:], 'big'):04X}"
    if sw in command["expect"] and len(collected) < len(queue):
        session.exchange += 1
        session.round_trips += 1
        session.expires_at = _expires()
        _save_session(session)
        return RelayAnswer(session, Batch(commands=[queue[len(collected)]], progress={}))
    return None


@transaction.atomic
def expire_idle_sessions() -> int:
    """Close sessions idle past their deadline; their running jobs go back to pending (resume later)."""
    now = timezone.now()
    stale = list(
        CardSession.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("card", "credential__organization")
        .filter(state=CardSession.State.OPEN, expires_at__lt=now)
    )
    for session in stale:
        with relay_identity(session.credential):
            _expire(session)
    return len(stale)


PLATFORM_FAULT = "the platform could not continue this card session (an internal error, logged); present the card later"


def _log_custody_failure(exc: CustodyError, session_id: Any) -> None:
    """Key custody failed under a relay exchange: an operator must act (custody messages never
    hold key material; no stack trace is needed to see which KEK did not open)."""
    logger.error("key custody failed in card session %s: %s: %s", session_id, type(exc).__name__, exc)


def _close_after_platform_fault(session_id: Any) -> None:
    """End a session the engine could not serve because of its own bug: the session is
    ``failed`` (not ``rejected``: neither the card nor the relay is blamed, no refusal is counted),
    its running jobs wait for the next presentation, and the audit log says so."""
    with transaction.atomic():
        session = CardSession.objects.select_for_update().filter(pk=session_id).first()
        if session is not None and session.state == CardSession.State.OPEN:
            _close_without_blame(session, CardSession.State.FAILED, "platform error", "session.failed")


def _expire(session: CardSession) -> None:
    """Close an idle session: its channel state is dropped, its running jobs wait for the next
    presentation. Audited."""
    _close_without_blame(session, CardSession.State.EXPIRED, "idle timeout", "session.expired")


def _close_without_blame(session: CardSession, state: str, reason: str, action: str) -> None:
    """Close ``session`` for a reason that is nobody's fault at the card's end (no attempt is
    charged, unlike :func:`_reject`): its channel state is dropped, its running jobs go back to
    pending, and the system records why."""
    session.state = state
    session.closed_reason = reason
    session.sealed_channel = None
    session.save()
    if session.card_id:
        CardJob.objects.filter(card_id=session.card_id, state=CardJob.State.RUNNING).update(state=CardJob.State.PENDING)
    record_event(
        action=action,
        subject_type="card_session",
        subject_id=str(session.id),  # record_event stores str(subject_id)
        card_cin=session.card.cin if session.card is not None else "",
        outcome="failure",
        reason=reason,
        actor_type="system",
    )


# ---------------------------------------------------------------------------------------------
# job preparation (Celery)


def prepare_job(job_id: int) -> bool:
    """Do the expensive, card-independent part of a job ahead of the card's presentation: generate
    the bank's key set for a new SSD in the bank's custody, check its releases parse. Idempotent:
    a redelivered task finds the work done and changes nothing. Returns True when it generated keys."""
    with transaction.atomic():
        job = (
            CardJob.objects.select_for_update(of=("self",))
            .select_related("card", "security_domain")
            .filter(pk=job_id)
            .first()
        )
        if job is None or job.state not in CardJob.OPEN_STATES or job.security_domain is None:
            return False
        sd = job.security_domain
        if sd.scp == SCP11_ID:
            return False  # the bank's key service makes its keys; the platform holds none
        if job.kind == CardJob.Kind.ENROLL_BANK:
            kvn = BANK_KVN[sd.scp]
        elif job.kind == CardJob.Kind.ROTATE_KEYS and "to_kvn" in job.params:
            kvn = int(job.params["to_kvn"])
        else:
            return False
        if keyset_for(sd.organization, job.card, sd.aid, kvn) is not None:
            return False
        ensure_bank_keyset(job, sd, kvn)
        return True
