"""Writes to the audit log (docs/audit.md §6).

* :func:`record_event` queues one entry. Every state-changing service calls it inside its own
  transaction, so the change and its entry commit (or roll back) together. It takes no lock: one
  INSERT of a *pending* row (``index`` NULL) carrying everything of the entry but its index, so
  concurrent transactions commit independently (and PostgreSQL can flush their commits together).
* :func:`sequence_pending` is the log's single writer (Trillian-style sequencing): under a lock
  held only for its own short transaction (PostgreSQL advisory lock; SQLite: the write lock), it
  takes committed pending rows in insertion order, gives them indices ``size .. size+n-1``,
  hashes their canonical leaves (the index is part of the leaf), appends them to the frontier,
  stores the perfect-subtree nodes they complete and the new state — O(log n) per entry, one
  transaction per batch. Rolled-back transactions leave no row, so the indices have no gaps. It
  runs after each appending transaction commits (non-blocking try-lock), from Celery beat every
  second, and before reads that should show the current log (:func:`catch_up`).
* :func:`make_checkpoint` signs the committed tree head with the log's Ed25519 key, which key
  custody holds wrapped under the log operator's (the agency's) KEK; audit reaches it only through
  the injected :class:`audit.signing.CheckpointSigner`.
* :func:`write_export` / :func:`export_lines` produce the ``ecard-audit-export/1`` file that
  ``python -m audit.verify`` checks (the whole log, or a range ``from``..checkpoint size).
* :func:`push_to_witnesses` sends a checkpoint to the configured witnesses (c2sp.org/tlog-witness)
  and stores their verified cosignatures, or records their refusal (``audit.witness_refused``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.signals import post_save, pre_save
from django.utils import timezone

from audit import selectors
from audit import witness as witness_protocol
from audit.checkpoint import CheckpointError, Verifier, key_id, parse_cosigner_vkey, verify_cosignatures, vkey_for
from audit.checkpoint import make_checkpoint as sign_checkpoint
from audit.export_format import ExportHeader, ExportWriter, entry_leaf_hash, format_time
from audit.merkle import CompactRange, ProofError, consistency_proof, frontier_coords, verify_consistency
from audit.models import AuditEntry, Checkpoint, LogState, MerkleNode, WitnessCosignature, WitnessRefusal
from audit.signing import LogSigningKey, checkpoint_signer
from ecard.errors import ServiceError
from ecard.prepared_sql import statement_cursor

__all__ = [
    "LogCorruptError",
    "WitnessConfig",
    "append_entries",
    "configured_witnesses",
    "ensure_checkpoint",
    "events_together",
    "export_lines",
    "log_verifier_key",
    "make_checkpoint",
    "push_to_witness",
    "push_to_witnesses",
    "record_event",
    "relayed_by",
    "sequence_pending",
    "write_export",
]

logger = logging.getLogger(__name__)


class LogCorruptError(RuntimeError):
    """The stored log state disagrees with itself (never expected; sequencing stops rather than guess)."""


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


# --------------------------------------------------------------------------- appends (queue)


@dataclass(frozen=True)
class RelayIdentity:
    """Who relays the card work being recorded: a terminal credential and its organisation."""

    actor_id: str
    organization: Any
    details: dict[str, str]


_relay_identity: ContextVar[RelayIdentity | None] = ContextVar("audit_relay_identity", default=None)


@contextmanager
def relayed_by(*, actor_id: str, organization: Any, details: dict[str, str]) -> Iterator[None]:
    """Name the relay of the card work recorded inside this block on every entry it records.

    A terminal presents cards it does not own, so each entry of its sessions says which terminal
    and which organisation did: entries of the client agent (``actor_type`` "agent", no user) take
    ``actor_id`` and ``organization`` as their actor and actor organisation, and every entry,
    the system's included, carries ``details`` under the key ``"relay"``.
    """
    token = _relay_identity.set(RelayIdentity(actor_id, organization, dict(details)))
    try:
        yield
    finally:
        _relay_identity.reset(token)


def record_event(
    *,
    action: str,
    subject_type: str,
    subject_id: str | int,
    actor: Any = None,
    actor_org: Any = None,
    organization: Any = None,
    card_cin: str = "",
    outcome: str = AuditEntry.Outcome.SUCCESS,
    reason: str = "",
    receipt: bytes | str | None = None,
    details: dict[str, Any] | None = None,
    actor_type: str | None = None,
    actor_id: str | None = None,
) -> AuditEntry:
    """Queue one entry for the log, in the caller's transaction (no lock: one INSERT).

    The row commits or rolls back with the change it records; once committed, the sequencer
    (:func:`sequence_pending`) gives it the next index, normally right after the commit (this
    function registers an ``on_commit`` hook) and otherwise within a second (Celery beat). The
    returned row's ``index`` is None until then.

    ``actor`` is a user (or None for the system; ``actor_id`` names a non-user actor such as a
    client agent), ``actor_org`` the organisation it acted for, ``organization`` the one the
    event concerns, ``card_cin`` the card. ``details`` must hold no key material and no personal
    data; it is kept exactly as given (JSON values, no floats). Inside :func:`relayed_by`, the
    entry also names the terminal that relays the card work.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("record_event must run inside the transaction of the change it records")
    relay = _relay_identity.get()
    if relay is not None:
        if actor is None and actor_type == AuditEntry.ActorType.AGENT:
            actor_id = actor_id or relay.actor_id
            actor_org = actor_org if actor_org is not None else relay.organization
        details = {**(details or {}), "relay": relay.details}
    if actor_type is None:
        actor_type = AuditEntry.ActorType.USER if actor is not None else AuditEntry.ActorType.SYSTEM
    actor_name = actor.get_username() if actor is not None and hasattr(actor, "get_username") else actor_id or ""
    if isinstance(receipt, bytes | bytearray):
        receipt = bytes(receipt).hex()
    row = AuditEntry(
        time=timezone.now(),
        actor_type=actor_type,
        actor_user=actor if actor is not None and getattr(actor, "pk", None) else None,
        actor_name=actor_name,
        actor_org=actor_org,
        actor_org_slug=getattr(actor_org, "slug", "") or "",
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id),
        card_cin=card_cin or "",
        organization_slug=getattr(organization, "slug", "") or "",
        outcome=outcome,
        reason=reason or "",
        receipt=(receipt or "").lower(),
        # As the database will give it back (tuples become lists), so the leaf the sequencer
        # hashes from the row is the entry validated here.
        details=json.loads(json.dumps(details or {}, allow_nan=False)),
    )
    row.as_entry(index=0)  # validates (make_entry): a bad entry fails the caller's change, not the sequencer
    pending = _batch.get()
    if pending is not None and pending.atomic_depth == len(connection.atomic_blocks):
        pending.rows.append(row)  # inserted with the others of the batch (see events_together)
        return row
    if connection.vendor == "postgresql":
        _insert_postgresql([row])
    else:
        row.save(force_insert=True)
    _sequence_after_commit()
    return row


@dataclass
class _PendingBatch:
    rows: list[AuditEntry]
    atomic_depth: int  # the transaction level the batch belongs to


_batch: contextvars.ContextVar[_PendingBatch | None] = contextvars.ContextVar("audit_event_batch", default=None)


@contextmanager
def events_together() -> Iterator[list[AuditEntry]]:
    """Queue the entries :func:`record_event` is asked for inside the block as ONE INSERT at its
    end, in the order they were asked for (the sequencer takes pending rows in insertion order,
    so the log's order, leaves and chain are those of one-by-one appends). For a unit of work
    that records several entries, such as a relay exchange.

    Must run inside the transaction of the changes the entries record. A ``record_event`` inside
    a nested transaction (a savepoint) of the block is inserted at once, so a rolled-back
    savepoint takes its entry with it; an exception leaving the block drops the queued entries
    (the enclosing transaction rolls back). Rows come back without ``pk`` until the block ends.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("events_together must run inside the transaction of the changes it records")
    outer = _batch.get()
    if outer is not None:
        yield outer.rows  # nested: the outer block inserts
        return
    pending = _PendingBatch(rows=[], atomic_depth=len(connection.atomic_blocks))
    token = _batch.set(pending)
    try:
        yield pending.rows
    finally:
        _batch.reset(token)
    append_entries(pending.rows)


def append_entries(rows: list[AuditEntry]) -> None:
    """Insert pending entries (built and validated by :func:`record_event`) with one statement."""
    if not rows:
        return
    if not connection.in_atomic_block:
        raise RuntimeError("append_entries must run inside the transaction of the changes it records")
    if connection.vendor == "postgresql":
        _insert_postgresql(rows)
    elif len(rows) == 1:
        rows[0].save(force_insert=True)
    else:
        for row in rows:
            pre_save.send(sender=AuditEntry, instance=row, raw=False, using=connection.alias, update_fields=None)
        AuditEntry.objects.bulk_create(rows)  # one INSERT; ids come back in order (RETURNING on both)
        for row in rows:
            post_save.send(
                sender=AuditEntry, instance=row, created=True, update_fields=None, raw=False, using=connection.alias
            )
    _sequence_after_commit()


_INSERT_FIELDS = [f for f in AuditEntry._meta.concrete_fields if f.attname not in {"id", "index", "leaf_hash"}]


@functools.cache
def _insert_sql(count: int) -> str:
    table = _q(AuditEntry._meta.db_table)
    columns = ", ".join(_q(f.column) for f in _INSERT_FIELDS)
    row = "(" + ", ".join(["%s"] * len(_INSERT_FIELDS)) + ")"
    return f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * count)} RETURNING id"  # noqa: S608


def _insert_postgresql(rows: list[AuditEntry]) -> None:
    """``save(force_insert=True)`` of each row in one INSERT, without the ORM's per-call SQL
    compilation (same signals: listeners such as the test suite's key leak scan rely on them).
    PostgreSQL returns the ids of a multi-row VALUES in its order, as bulk_create relies on."""
    values: list[Any] = []
    for row in rows:
        pre_save.send(sender=AuditEntry, instance=row, raw=False, using=connection.alias, update_fields=None)
        values += [f.get_db_prep_save(f.pre_save(row, True), connection) for f in _INSERT_FIELDS]
    cursor = statement_cursor(connection)
    cursor.execute(_insert_sql(len(rows)), values)
    ids = [found[0] for found in cursor.fetchall()]
    for row, pk in zip(rows, ids, strict=True):
        row.pk = pk
        row._state.adding = False
        row._state.db = connection.alias
        post_save.send(
            sender=AuditEntry, instance=row, created=True, update_fields=None, raw=False, using=connection.alias
        )


# --------------------------------------------------------------------------- the sequencer

# Key of the PostgreSQL advisory lock that admits one sequencer at a time (any constant; "ecardlog").
SEQUENCER_LOCK = 0x6563617264_6C6F67


_last_on_commit_run = -math.inf  # time.monotonic() of this process's last on-commit sequencing run


def on_commit_interval() -> float:
    """Seconds between one process's on-commit sequencing runs: 0 on SQLite (every commit; the
    database admits one writer anyway), 0.05 s on PostgreSQL, where a run per commit would double
    the commits (and WAL flushes) of a busy process while a run every 50 ms sequences everything
    its and the other processes' commits queued meanwhile in one batch."""
    value = getattr(settings, "ECARD_AUDIT_SEQUENCE_ON_COMMIT_INTERVAL", None)
    if value is None:
        return 0.0 if connection.vendor == "sqlite" else 0.05
    return float(value)


def _run_sequencer_after_commit() -> None:
    global _last_on_commit_run
    now = time.monotonic()
    if now - _last_on_commit_run < on_commit_interval():
        return  # this process ran one moments ago; the next commit, another process or beat picks it up
    _last_on_commit_run = now
    try:
        sequence_pending(limit=sequence_batch_size(), wait=False, max_batches=4)
    except Exception:  # the caller's change is committed; beat sequences the entry later
        logger.exception("sequencing after commit failed (the beat task will retry)")


def _sequence_after_commit() -> None:
    """Ask for one non-blocking sequencing run when the caller's transaction commits (once per transaction)."""
    if not getattr(settings, "ECARD_AUDIT_SEQUENCE_ON_COMMIT", True):
        return
    # Django keeps (sids, func, robust) triples; the stubs still say pairs, so take the func by position.
    if any(item[1] is _run_sequencer_after_commit for item in connection.run_on_commit):
        return
    transaction.on_commit(_run_sequencer_after_commit, robust=True)


def sequence_batch_size() -> int:
    return int(getattr(settings, "ECARD_AUDIT_SEQUENCE_BATCH", 1000))


def _state_for_sequencing() -> tuple[int, Any]:
    """``(size, frontier)`` of the log; the caller holds the sequencer lock. Created on first use."""
    found = LogState.objects.filter(pk=LogState.SINGLETON).values_list("size", "frontier").first()
    if found is not None:
        return found
    # First sequencing ever (or after a test flush): rebuild the frontier from the stored nodes.
    size = AuditEntry.objects.filter(index__isnull=False).count()
    frontier = CompactRange.from_store(selectors.DbNodeStore(), size) if size else CompactRange()
    LogState.objects.create(pk=LogState.SINGLETON, size=size, frontier=frontier.to_dict())
    return size, frontier.to_dict()


def _frontier_of(size: int, frontier: Any) -> CompactRange:
    if isinstance(frontier, str):
        frontier = json.loads(frontier)
    compact = CompactRange.from_dict(frontier) if frontier else CompactRange()
    if compact.size != size:
        raise LogCorruptError(f"log state size {size} disagrees with its frontier ({compact.size})")
    return compact


def _take_lock(wait: bool) -> bool:
    """The sequencer lock for the current transaction, if there is anything to sequence.

    PostgreSQL: a transaction-level advisory lock (it writes nothing, so an attempt that finds the
    lock taken or nothing pending costs no WAL flush); ``wait=False`` only tries it, and only when
    some entry is pending (one round trip). SQLite: the IMMEDIATE transaction already holds the
    database write lock."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEQUENCER_LOCK])
            return True
        table, index = _q(AuditEntry._meta.db_table), _q("index")
        cursor.execute(
            f"SELECT pg_try_advisory_xact_lock(%s) WHERE EXISTS (SELECT 1 FROM {table} WHERE {index} IS NULL)",  # noqa: S608
            [SEQUENCER_LOCK],
        )
        found = cursor.fetchone()
        return bool(found and found[0])


# What the leaf is built from (the sequencer loads nothing else of a pending row).
_PENDING_FIELDS = [
    f.attname
    for f in AuditEntry._meta.concrete_fields
    if f.attname not in {"id", "index", "leaf_hash", "actor_user_id", "actor_org_id"}
]


def _write_batch_postgresql(rows: list[AuditEntry], nodes: list[tuple[int, int, bytes]], compact: CompactRange) -> None:
    """The new state, the new nodes, and indices and leaf hashes: one statement (data-modifying CTEs)."""
    entry_table, node_table, state_table = (_q(m._meta.db_table) for m in (AuditEntry, MerkleNode, LogState))
    sql = f"WITH s AS (UPDATE {state_table} SET size = %s, frontier = %s::jsonb WHERE id = %s)"  # noqa: S608
    params: list[Any] = [compact.size, json.dumps(compact.to_dict()), LogState.SINGLETON]
    if nodes:
        node_rows = ", ".join(["(%s, %s, %s::bytea)"] * len(nodes))
        columns = f"{_q('level')}, {_q('index')}, {_q('hash')}"
        sql += f", n AS (INSERT INTO {node_table} ({columns}) VALUES {node_rows})"  # noqa: S608
        params += [v for node in nodes for v in node]
    entry_rows = ", ".join(["(%s::bigint, %s::bigint, %s::bytea)"] * len(rows))
    sql += (
        f" UPDATE {entry_table} AS t SET {_q('index')} = v.ix, {_q('leaf_hash')} = v.h"  # noqa: S608
        f" FROM (VALUES {entry_rows}) AS v(id, ix, h) WHERE t.id = v.id AND t.{_q('index')} IS NULL"
    )
    params += [v for row in rows for v in (row.pk, row.index, row.leaf_hash)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        updated = cursor.rowcount
    if updated != len(rows):
        raise LogCorruptError(f"sequenced {updated} of {len(rows)} pending entries")


def _write_batch_orm(rows: list[AuditEntry], nodes: list[tuple[int, int, bytes]], compact: CompactRange) -> None:
    AuditEntry.objects.bulk_update(rows, ["index", "leaf_hash"], batch_size=500)
    MerkleNode.objects.bulk_create([MerkleNode(level=lv, index=ix, hash=h) for lv, ix, h in nodes], batch_size=500)
    LogState.objects.filter(pk=LogState.SINGLETON).update(size=compact.size, frontier=compact.to_dict())


def _sequence_batch(limit: int, wait: bool) -> int | None:
    """One sequencing transaction: up to ``limit`` committed pending entries, in insertion order,
    get indices ``size .. size+n-1``. Returns how many, or None when ``wait`` is False and another
    sequencer holds the lock."""
    with transaction.atomic():
        if not _take_lock(wait):
            return None  # busy, or (not waiting) nothing pending
        rows = list(AuditEntry.objects.filter(index__isnull=True).order_by("pk").only("pk", *_PENDING_FIELDS)[:limit])
        if not rows:
            return 0
        size, frontier = _state_for_sequencing()
        compact = _frontier_of(size, frontier)
        nodes: list[tuple[int, int, bytes]] = []
        for row in rows:
            row.index = compact.size
            row.leaf_hash = entry_leaf_hash(row.as_entry())
            nodes += compact.append(row.leaf_hash)
        if connection.vendor == "postgresql":
            _write_batch_postgresql(rows, nodes, compact)
        else:
            _write_batch_orm(rows, nodes, compact)
    return len(rows)


def sequence_pending(limit: int = 1000, *, wait: bool = True, max_batches: int | None = None) -> int:
    """Sequence the committed pending entries: batches of at most ``limit`` entries, each its own
    short transaction holding the sequencer lock, until none is left (or ``max_batches``).

    ``wait=False`` returns at once (0) if another process is sequencing. Returns the number of
    entries sequenced. Inside a caller's transaction the lock is held until that transaction ends,
    so call it outside one where possible.
    """
    total = batches = 0
    while max_batches is None or batches < max_batches:
        done = _sequence_batch(limit, wait)
        batches += 1
        if done is None:
            break
        total += done
        if done < limit:
            break
    return total


def catch_up() -> int:
    """Sequence what is pending before a read that should show the current log (bounded: at most
    ``ECARD_AUDIT_READ_SEQUENCE_MAX`` entries). Inside a transaction on PostgreSQL it only tries
    the lock (a read never waits for a sequencer, and never holds the lock long by waiting)."""
    batch = sequence_batch_size()
    bound = int(getattr(settings, "ECARD_AUDIT_READ_SEQUENCE_MAX", 10 * batch))
    wait = not (connection.vendor == "postgresql" and connection.in_atomic_block)
    return sequence_pending(limit=batch, wait=wait, max_batches=max(1, bound // batch))


# --------------------------------------------------------------------------- the log's signing key


def log_verifier_key(*, create: bool = True) -> str | None:
    """The log's published verifier key (``<origin>+<key id>+<base64 key>``), or None if none yet.

    With ``create``, the signing key is generated first if there is none (that appends custody
    entries to the log)."""
    signer = checkpoint_signer()
    if create:
        signer.ensure_key()
    public_key = signer.public_key()
    return vkey_for(public_key, selectors.log_origin()) if public_key is not None else None


# --------------------------------------------------------------------------- checkpoints


def ensure_checkpoint() -> tuple[Checkpoint, bool]:
    """Sign the committed tree head unless a checkpoint of that size exists; ``(checkpoint, created)``."""
    signer = checkpoint_signer()
    signer.ensure_key()  # creating it appends custody entries: do it first
    catch_up()  # sign what is committed, sequenced first
    size, frontier_root = selectors.current_head(fresh=False)
    existing = Checkpoint.objects.filter(size=size).first()
    if existing is not None:
        return existing, False
    latest = selectors.latest_checkpoint()
    if latest is not None and latest.size > size:
        raise LogCorruptError(f"the log shrank below its checkpoint of size {latest.size}")
    # The signed root is always computed from the stored nodes (docs/audit.md §2), and must agree
    # with the frontier: a mismatch means the node table was tampered with.
    root = selectors.root_at(size)
    if root != frontier_root:
        raise LogCorruptError(f"stored nodes and frontier disagree on the root of size {size}")
    # Never sign a head that is not an extension of the last signed one (docs/audit.md §2).
    if latest is not None:
        try:
            proof = selectors.consistency_proof_for(latest.size, size)
            verify_consistency(latest.size, size, bytes(latest.root_hash), root, proof)
        except ProofError as exc:
            raise LogCorruptError(f"the log is not consistent with its checkpoint of size {latest.size}") from exc
    log_key = LogSigningKey(signer)
    origin = selectors.log_origin()
    text = sign_checkpoint(origin, size, root, log_key)
    try:
        with transaction.atomic():
            checkpoint = Checkpoint.objects.create(
                size=size, root_hash=root, text=text, key_id=key_id(origin, log_key.public_key()).hex()
            )
    except IntegrityError:  # signed concurrently by another process
        return Checkpoint.objects.get(size=size), False
    if getattr(settings, "ECARD_WITNESSES", None):
        transaction.on_commit(functools.partial(_queue_witness_push, checkpoint.size), robust=True)
    return checkpoint, True


def make_checkpoint() -> Checkpoint:
    """Sign the current tree head (idempotent: returns the existing checkpoint if the size is unchanged)."""
    return ensure_checkpoint()[0]


# --------------------------------------------------------------------------- export


def _pick_earlier(sizes: list[int], limit: int) -> list[int]:
    """At most ``limit`` of the earlier checkpoint sizes, spread evenly over the log's history."""
    if len(sizes) <= limit:
        return sizes
    step = len(sizes) / limit
    return sorted({sizes[min(len(sizes) - 1, math.floor(k * step))] for k in range(limit)} | {sizes[-1]})


def export_header(checkpoint: Checkpoint, start: int = 0) -> ExportHeader:
    """Header for an export that covers exactly ``checkpoint`` (entries ``start`` .. size-1): earlier
    checkpoints (from ``start`` on) and proofs to it; for a range, the frontier at ``start``."""
    n = checkpoint.size
    if not 0 <= start <= n:
        raise ServiceError(f"an export of the checkpoint of size {n} starts at an entry in 0..{n}", code="invalid")
    limit = int(getattr(settings, "ECARD_AUDIT_EXPORT_CHECKPOINTS", 256))
    sizes = list(
        Checkpoint.objects.filter(size__lt=n, size__gt=0, size__gte=start)
        .order_by("size")
        .values_list("size", flat=True)
    )
    sizes = _pick_earlier(sizes, limit)
    rows = Checkpoint.objects.filter(size__in=sizes).prefetch_related("cosignatures")
    earlier = {c.size: c.published_text for c in rows}
    store = selectors.DbNodeStore()
    return ExportHeader(
        origin=selectors.log_origin(),
        verifier_key=log_verifier_key(create=False) or "",
        checkpoint=checkpoint.published_text,
        checkpoints=[earlier[s] for s in sizes],
        consistency_proofs={s: consistency_proof(store, s, n) for s in sizes},
        exported_at=format_time(dt.datetime.now(dt.UTC)),
        start=start,
        frontier=[bytes(h) for h in store.get_nodes(frontier_coords(start))] if start else [],
    )


class _Buffer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


def export_lines(checkpoint: Checkpoint | None = None, *, start: int = 0, chunk_size: int = 2000) -> Iterator[str]:
    """The export as text chunks (header, then entries ``start`` .. size-1 in order), for streaming."""
    if checkpoint is None:
        checkpoint = selectors.latest_checkpoint()
        if checkpoint is None:
            raise ServiceError("the log has no signed checkpoint yet", code="state")
    buffer = _Buffer()
    writer = ExportWriter(buffer, export_header(checkpoint, start))
    yield buffer.take()
    rows = (
        AuditEntry.objects.filter(index__gte=start, index__lt=checkpoint.size)
        .order_by("index")
        .iterator(chunk_size=chunk_size)
    )
    for row in rows:
        if row.index != writer.count:
            raise LogCorruptError(f"entry {writer.count} is missing from the database")
        if row.leaf_hash is None:
            raise LogCorruptError(f"entry {row.index} has no stored leaf hash")
        writer.write_entry(row.as_entry(), leaf_hash=bytes(row.leaf_hash))
        if len(buffer.parts) >= chunk_size:
            yield buffer.take()
    if writer.count != checkpoint.size:
        raise LogCorruptError(f"entries missing: found {writer.count - start} of {checkpoint.size - start}")
    yield buffer.take()


def write_export(fp: IO[str], *, checkpoint: Checkpoint | None = None, start: int = 0) -> Checkpoint:
    """Write the export of ``checkpoint`` (default: the latest) from entry ``start`` to a text file;
    return the checkpoint."""
    if checkpoint is None:
        checkpoint = selectors.latest_checkpoint()
        if checkpoint is None:
            raise ServiceError("the log has no signed checkpoint yet", code="state")
    for chunk in export_lines(checkpoint, start=start):
        fp.write(chunk)
    return checkpoint


# --------------------------------------------------------------------------- witnesses


@dataclass(frozen=True)
class WitnessConfig:
    """One entry of ``ECARD_WITNESSES``."""

    name: str
    url: str
    verifier: Verifier


def configured_witnesses() -> list[WitnessConfig]:
    """The witnesses of ``ECARD_WITNESSES``; ServiceError if one's key is not a cosigner key."""
    out = []
    for name, url, vkey in getattr(settings, "ECARD_WITNESSES", []):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ServiceError(f"witness {name}: its URL must be http(s)://host[:port][/prefix]", code="config")
        try:
            out.append(WitnessConfig(name, url, parse_cosigner_vkey(vkey)))
        except CheckpointError as exc:
            raise ServiceError(f"witness {name}: bad verifier key in ECARD_WITNESSES: {exc}", code="config") from None
    return out


def _queue_witness_push(size: int) -> None:
    from audit import tasks  # the tasks module imports this one

    tasks.push_checkpoint.delay(size)


def _refused(checkpoint: Checkpoint, witness: WitnessConfig, status: int, reason: str, response: str) -> str:
    """Keep the refusal as evidence and append ``audit.witness_refused`` to the log (once per checkpoint)."""
    logger.warning("witness %s refused the checkpoint of size %s: %s", witness.name, checkpoint.size, reason)
    with transaction.atomic():
        _refusal, created = WitnessRefusal.objects.get_or_create(
            checkpoint=checkpoint,
            witness=witness.name,
            defaults={"status": status, "reason": reason, "response": response[:2000]},
        )
        if created:
            record_event(
                action="audit.witness_refused",
                subject_type="witness",
                subject_id=witness.name,
                outcome=AuditEntry.Outcome.DENIED,
                reason=reason,
                details={"checkpoint_size": checkpoint.size, "status": status, "witness_url": witness.url},
            )
    return "refused"


def _last_cosigned_size(witness: WitnessConfig) -> int:
    found = (
        WitnessCosignature.objects.filter(witness=witness.name)
        .order_by("-checkpoint__size")
        .values_list("checkpoint__size", flat=True)
        .first()
    )
    return found or 0


def push_to_witness(checkpoint: Checkpoint, witness: WitnessConfig) -> str:
    """Send ``checkpoint`` to one witness (c2sp.org/tlog-witness ``add-checkpoint``).

    Returns ``"cosigned"`` (its verified cosignature stored), ``"done"`` (stored before: nothing
    sent), ``"superseded"`` (the witness already cosigned a later checkpoint of this log) or
    ``"refused"`` (recorded, see :func:`_refused`). Raises :class:`audit.witness.WitnessUnavailable`
    when the witness cannot be reached (retry later). Idempotent.
    """
    if WitnessCosignature.objects.filter(checkpoint=checkpoint, witness=witness.name).exists():
        return "done"
    n = checkpoint.size
    old = _last_cosigned_size(witness)
    timeout = float(getattr(settings, "ECARD_WITNESS_TIMEOUT", 10))
    for attempt in range(2):
        if old > n:
            return "superseded"
        proof = selectors.consistency_proof_for(old, n) if old else []
        body = witness_protocol.add_checkpoint_body(old, proof, checkpoint.text)
        status, content_type, text = witness_protocol.submit(witness.url, body, timeout=timeout)
        if status == 200:
            return _store_cosignature(checkpoint, witness, text)
        sized = content_type == witness_protocol.SIZE_CONTENT_TYPE
        known = witness_protocol.parse_size_response(text) if sized else None
        if status == 409 and known is not None and known != old and attempt == 0:
            if known > n:
                if known <= selectors.current_size():
                    return "superseded"
                return _refused(
                    checkpoint,
                    witness,
                    status,
                    f"the witness has cosigned size {known}, beyond this log's {selectors.current_size()} entries",
                    text,
                )
            old = known  # the witness knows another size than we recorded: prove from that one
            continue
        reasons = {
            409: f"conflict: the witness holds another tree at size {known if known is not None else old} (fork)",
            422: f"the consistency proof from size {old} did not convince the witness (fork or rollback)",
            403: "the witness does not accept the log's signature (is it configured with the log's key?)",
            404: "the witness does not know this log's origin",
        }
        return _refused(checkpoint, witness, status, reasons.get(status, f"HTTP {status}: {text.strip()[:200]}"), text)
    raise AssertionError("unreachable")  # pragma: no cover


def _store_cosignature(checkpoint: Checkpoint, witness: WitnessConfig, text: str) -> str:
    try:
        found = verify_cosignatures(checkpoint.text + text, [witness.verifier])
    except CheckpointError as exc:
        return _refused(checkpoint, witness, 200, f"the witness's answer is not a valid cosignature: {exc}", text)
    if not found:
        reason = "the witness answered without a cosignature by its configured key"
        return _refused(checkpoint, witness, 200, reason, text)
    cosig = found[0]
    WitnessCosignature.objects.get_or_create(
        checkpoint=checkpoint,
        witness=witness.name,
        defaults={
            "key_name": cosig.name,
            "key_id": cosig.key_id.hex(),
            "timestamp": cosig.timestamp,
            "line": cosig.line,
        },
    )
    return "cosigned"


def push_to_witnesses(size: int | None = None, *, names: list[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Send the checkpoint of ``size`` (default: the latest) to every configured witness (or those in
    ``names``). Returns ``({witness: outcome}, [witnesses that could not be reached])``."""
    witnesses = [w for w in configured_witnesses() if names is None or w.name in names]
    checkpoint = Checkpoint.objects.filter(size=size).first() if size is not None else selectors.latest_checkpoint()
    if checkpoint is None or not witnesses:
        return {}, []
    results: dict[str, str] = {}
    unavailable: list[str] = []
    for witness in witnesses:
        try:
            results[witness.name] = push_to_witness(checkpoint, witness)
        except witness_protocol.WitnessUnavailable as exc:
            logger.warning("witness %s unavailable (checkpoint size %s): %s", witness.name, checkpoint.size, exc)
            results[witness.name] = "unavailable"
            unavailable.append(witness.name)
    return results, unavailable
