"""Writes to the audit log (docs/audit.md §6).

* :func:`record_event` appends one entry. Every state-changing service calls it inside its own
  transaction, so the change and its entry commit (or roll back) together. The append locks the
  :class:`~audit.models.LogState` row (PostgreSQL: ``SELECT … FOR UPDATE``; SQLite: the
  ``IMMEDIATE`` transaction already holds the database write lock), takes ``index = size``,
  hashes the canonical entry, appends it to the frontier and stores the perfect-subtree nodes
  the leaf completes: O(log n) work, never a pass over the leaves. Concurrent appends wait on
  that lock until the holder commits or rolls back, so indices have no duplicates and no gaps.
* :func:`make_checkpoint` signs the committed tree head with the log's Ed25519 key, which key
  custody holds wrapped under the log operator's (the agency's) KEK.
* :func:`write_export` / :func:`export_lines` produce the ``ecard-audit-export/1`` file that
  ``python -m audit.verify`` checks.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Iterator
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.signals import post_save, pre_save
from django.utils import timezone

from audit import selectors
from audit.checkpoint import key_id
from audit.checkpoint import make_checkpoint as sign_checkpoint
from audit.export_format import ExportHeader, ExportWriter, canonical_json, format_time
from audit.merkle import CompactRange, ProofError, consistency_proof, verify_consistency
from audit.merkle import leaf_hash as merkle_leaf_hash
from audit.models import AuditEntry, Checkpoint, LogState, MerkleNode
from ecard.errors import ServiceError
from issuers.custody_models import KeySet
from issuers.models import Organization

__all__ = [
    "LogCorruptError",
    "ensure_checkpoint",
    "export_lines",
    "log_verifier_key",
    "make_checkpoint",
    "record_event",
    "write_export",
]


class LogCorruptError(RuntimeError):
    """The stored log state disagrees with itself (never expected; appends stop rather than guess)."""


# --------------------------------------------------------------------------- appends


class _LeafTemplate:
    """The entry's canonical bytes around the two members only known under the lock.

    Canonical JSON sorts members by name: ``action, actor, card, details`` < ``index`` <
    ``organisation, outcome, reason, receipt, subject`` < ``time``. So the leaf bytes are
    ``head + ',"index":' + i + ',' + middle + ',"time":"…"}'`` where ``head`` and ``middle`` are
    canonical encodings of those member groups — exactly :func:`canonical_leaf_bytes` of the
    whole entry (the tests check every stored leaf hash against it). Built and validated with
    :func:`make_entry` before the lock, so the lock is held for a hash and a few writes only.
    """

    def __init__(self, row: AuditEntry) -> None:
        row.index, row.time = 0, timezone.now()
        entry = row.as_entry()  # validates (make_entry): raises before any lock is taken
        self.head = canonical_json({k: entry[k] for k in ("action", "actor", "card", "details")})[:-1]
        middle = canonical_json({k: entry[k] for k in ("organisation", "outcome", "reason", "receipt", "subject")})
        self.middle = middle[1:-1]

    def leaf_hash(self, index: int, time: dt.datetime) -> bytes:
        leaf = b"".join(
            (
                self.head,
                b',"index":',
                str(index).encode(),
                b",",
                self.middle,
                b',"time":"',
                format_time(time).encode(),
                b'"}',
            )
        )
        return merkle_leaf_hash(leaf)


def _locked_state() -> LogState:
    """The LogState row, locked for this transaction (created on first use)."""
    state = LogState.objects.select_for_update().filter(pk=LogState.SINGLETON).first()
    if state is not None:
        return state
    # First append ever (or after a test flush). Concurrent creators meet on the primary key.
    size = AuditEntry.objects.count()
    frontier = CompactRange.from_store(selectors.DbNodeStore(), size) if size else CompactRange()
    LogState.objects.get_or_create(pk=LogState.SINGLETON, defaults={"size": size, "frontier": frontier.to_dict()})
    return LogState.objects.select_for_update().get(pk=LogState.SINGLETON)


def _frontier_of(size: int, frontier: Any) -> CompactRange:
    if isinstance(frontier, str):
        frontier = json.loads(frontier)
    compact = CompactRange.from_dict(frontier) if frontier else CompactRange()
    if compact.size != size:
        raise LogCorruptError(f"log state size {size} disagrees with its frontier ({compact.size})")
    return compact


def _append_orm(row: AuditEntry, template: _LeafTemplate) -> None:
    """Portable append (SQLite): the IMMEDIATE transaction already holds the write lock."""
    state = _locked_state()
    compact = _frontier_of(state.size, state.frontier)
    row.index, row.time = state.size, timezone.now()
    row.leaf_hash = template.leaf_hash(row.index, row.time)
    nodes = compact.append(row.leaf_hash)
    row.save(force_insert=True)
    MerkleNode.objects.bulk_create([MerkleNode(level=lv, index=ix, hash=h) for lv, ix, h in nodes])
    state.size = compact.size
    state.frontier = compact.to_dict()
    state.save(update_fields=["size", "frontier"])


_ENTRY_FIELDS = (
    "index",
    "time",
    "actor_type",
    "actor_user",
    "actor_name",
    "actor_org",
    "actor_org_slug",
    "action",
    "subject_type",
    "subject_id",
    "card_cin",
    "organization_slug",
    "outcome",
    "reason",
    "receipt",
    "details",
    "leaf_hash",
)


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


@functools.cache
def _pg_statements(node_count: int) -> tuple[str, str]:
    state_table, entry_table, node_table = (_q(m._meta.db_table) for m in (LogState, AuditEntry, MerkleNode))
    lock = f"SELECT size, frontier FROM {state_table} WHERE id = %s FOR UPDATE"  # noqa: S608
    columns = ", ".join(_q(AuditEntry._meta.get_field(name).column) for name in _ENTRY_FIELDS)
    placeholders = ", ".join(["%s"] * len(_ENTRY_FIELDS))
    node_rows = ", ".join(["(%s, %s, %s)"] * node_count)
    write = (
        f"WITH e AS (INSERT INTO {entry_table} ({columns}) VALUES ({placeholders}) RETURNING id),"  # noqa: S608
        f" n AS (INSERT INTO {node_table} ({_q('level')}, {_q('index')}, {_q('hash')}) VALUES {node_rows})"
        f" UPDATE {state_table} SET size = %s, frontier = %s::jsonb WHERE id = %s RETURNING (SELECT id FROM e)"
    )
    return lock, write


def _append_postgresql(row: AuditEntry, template: _LeafTemplate) -> None:
    """PostgreSQL append: lock and read the state in one round trip, write entry, nodes and state
    in a second (one statement with data-modifying CTEs), so the row lock — held until the
    caller commits — covers as little work as possible."""
    fields = [AuditEntry._meta.get_field(name) for name in _ENTRY_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(_pg_statements(1)[0], [LogState.SINGLETON])
        found = cursor.fetchone()
        if found is None:
            state = _locked_state()
            found = (state.size, state.frontier)
        size, frontier = found
        compact = _frontier_of(size, frontier)
        row.index, row.time = size, timezone.now()
        row.leaf_hash = template.leaf_hash(size, row.time)
        nodes = compact.append(row.leaf_hash)
        pre_save.send(sender=AuditEntry, instance=row, raw=False, using=connection.alias, update_fields=None)
        values = [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]
        node_values = [v for lv, ix, h in nodes for v in (lv, ix, h)]
        cursor.execute(
            _pg_statements(len(nodes))[1],
            [*values, *node_values, compact.size, json.dumps(compact.to_dict()), LogState.SINGLETON],
        )
        row.pk = cursor.fetchone()[0]
    row._state.adding = False
    row._state.db = connection.alias
    # The ORM path sends these from save(); listeners (e.g. the test suite's key leak scan) rely on them.
    post_save.send(sender=AuditEntry, instance=row, created=True, update_fields=None, raw=False, using=connection.alias)


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
    """Append one entry to the log, in the caller's transaction.

    ``actor`` is a user (or None for the system; ``actor_id`` names a non-user actor such as a
    client agent), ``actor_org`` the organisation it acted for, ``organization`` the one the
    event concerns, ``card_cin`` the card. ``details`` must hold no key material and no personal
    data; it is kept exactly as given (JSON values, no floats).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("record_event must run inside the transaction of the change it records")
    if actor_type is None:
        actor_type = AuditEntry.ActorType.USER if actor is not None else AuditEntry.ActorType.SYSTEM
    actor_name = actor.get_username() if actor is not None and hasattr(actor, "get_username") else actor_id or ""
    if isinstance(receipt, bytes | bytearray):
        receipt = bytes(receipt).hex()
    row = AuditEntry(
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
        # As the database will give it back (tuples become lists), so the hash made now is the
        # hash recomputed from the row later.
        details=json.loads(json.dumps(details or {}, allow_nan=False)),
    )
    template = _LeafTemplate(row)
    # savepoint=False: no extra round trips; if anything below fails the caller's transaction
    # is marked for rollback, so a half-written append can never commit.
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            _append_postgresql(row, template)
        else:
            _append_orm(row, template)
    return row


# --------------------------------------------------------------------------- the log's signing key


def log_operator() -> Organization:
    """The organisation that runs the log and owns its key (see :func:`audit.selectors.log_operator`)."""
    org = selectors.log_operator()
    if org is None:
        raise ServiceError("there is no agency to operate the audit log yet", code="state")
    return org


def signing_keyset(*, create: bool = True) -> KeySet | None:
    """The checkpoint signing key set in custody; generated (once, under a lock) on first use.

    The Ed25519 key is stored only wrapped under the operator's KEK (purpose ``checkpoint_signing``);
    storing it appends custody entries to the log like any other key.
    """
    org = log_operator()
    keyset = selectors.checkpoint_keyset(org)
    if keyset is not None or not create:
        return keyset
    from issuers import custody  # custody records its own events through this module

    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org.pk).first()  # one creator at a time
        keyset = selectors.checkpoint_keyset(org)
        if keyset is None:
            keyset = custody.generate_private_key(
                org, purpose=KeySet.Purpose.CHECKPOINT_SIGNING, algorithm="ed25519", kvn=selectors.CHECKPOINT_KEY_KVN
            )
    return keyset


def log_verifier_key(*, create: bool = True) -> str | None:
    """The log's published verifier key (``<origin>+<key id>+<base64 key>``), or None if none yet."""
    keyset = signing_keyset(create=create) if create else None
    if keyset is not None:
        return selectors.keyset_verifier_key(keyset)
    return selectors.published_verifier_key()


# --------------------------------------------------------------------------- checkpoints


def ensure_checkpoint() -> tuple[Checkpoint, bool]:
    """Sign the committed tree head unless a checkpoint of that size exists; ``(checkpoint, created)``."""
    keyset = signing_keyset(create=True)  # creating it appends custody entries: do it first
    assert keyset is not None
    size, frontier_root = selectors.current_head()
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
    from issuers import custody

    private_key = custody.load_private_key(keyset)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise LogCorruptError("the checkpoint signing key is not an Ed25519 key")
    origin = selectors.log_origin()
    text = sign_checkpoint(origin, size, root, private_key)
    try:
        with transaction.atomic():
            checkpoint = Checkpoint.objects.create(
                size=size, root_hash=root, text=text, key_id=key_id(origin, private_key.public_key()).hex()
            )
    except IntegrityError:  # signed concurrently by another process
        return Checkpoint.objects.get(size=size), False
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


def export_header(checkpoint: Checkpoint) -> ExportHeader:
    """Header for an export that covers exactly ``checkpoint``: earlier checkpoints and proofs to it."""
    n = checkpoint.size
    limit = int(getattr(settings, "ECARD_AUDIT_EXPORT_CHECKPOINTS", 256))
    sizes = list(Checkpoint.objects.filter(size__lt=n, size__gt=0).order_by("size").values_list("size", flat=True))
    sizes = _pick_earlier(sizes, limit)
    earlier = dict(Checkpoint.objects.filter(size__in=sizes).values_list("size", "text"))
    store = selectors.DbNodeStore()
    return ExportHeader(
        origin=selectors.log_origin(),
        verifier_key=log_verifier_key(create=False) or "",
        checkpoint=checkpoint.text,
        checkpoints=[earlier[s] for s in sizes],
        consistency_proofs={s: consistency_proof(store, s, n) for s in sizes},
        exported_at=format_time(dt.datetime.now(dt.UTC)),
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


def export_lines(checkpoint: Checkpoint | None = None, *, chunk_size: int = 2000) -> Iterator[str]:
    """The export as text chunks (header, then entries 0 .. size-1 in order), for streaming."""
    if checkpoint is None:
        checkpoint = selectors.latest_checkpoint()
        if checkpoint is None:
            raise ServiceError("the log has no signed checkpoint yet", code="state")
    buffer = _Buffer()
    writer = ExportWriter(buffer, export_header(checkpoint))
    yield buffer.take()
    rows = AuditEntry.objects.filter(index__lt=checkpoint.size).order_by("index").iterator(chunk_size=chunk_size)
    for row in rows:
        if row.index != writer.count:
            raise LogCorruptError(f"entry {writer.count} is missing from the database")
        writer.write_entry(row.as_entry(), leaf_hash=bytes(row.leaf_hash))
        if len(buffer.parts) >= chunk_size:
            yield buffer.take()
    if writer.count != checkpoint.size:
        raise LogCorruptError(f"entries missing: found {writer.count} of {checkpoint.size}")
    yield buffer.take()


def write_export(fp: IO[str], *, checkpoint: Checkpoint | None = None) -> Checkpoint:
    """Write the export of ``checkpoint`` (default: the latest) to a text file; return the checkpoint."""
    if checkpoint is None:
        checkpoint = selectors.latest_checkpoint()
        if checkpoint is None:
            raise ServiceError("the log has no signed checkpoint yet", code="state")
    for chunk in export_lines(checkpoint):
        fp.write(chunk)
    return checkpoint
