"""Reads of the audit log, scoped to what the caller may see (the API and the portal share them).

Visibility:
- the agency and regulators read every entry (and may export the whole log);
- a bank reads the entries whose ``organization_slug`` is its own (never the empty slug of
  entries that concern no organisation);
- a citizen reads the entries of their own cards (``card_cin`` of a card they hold; the caller passes
  those CINs: cards sit above audit);
- anyone else reads nothing.

Checkpoints, tree heads and proofs are hashes only: every signed-in user may read them (an
inclusion proof is only served for an entry the caller can see).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import django_filters
import django_filters.fields
from django import forms
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.db.models import QuerySet

from audit.checkpoint import CheckpointError, SignatureError, parse_checkpoint, parse_vkey, vkey_for
from audit.export_format import entry_leaf_hash
from audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    consistency_proof_coords,
    frontier_coords,
    inclusion_proof,
    inclusion_proof_coords,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from audit.merkle import _resolve as resolve_groups  # fetch many node groups in one query, fold each
from audit.models import AuditEntry, Checkpoint, LogState, MerkleNode, SecurityEvent
from audit.signing import checkpoint_signer
from ecard.principals import principal

User = AbstractBaseUser | AnonymousUser

# --------------------------------------------------------------------------- node store


class DbNodeStore:
    """:class:`audit.merkle.NodeStore` over the ``MerkleNode`` table; a whole proof is one query."""

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def get_node(self, level: int, index: int) -> bytes:
        row = MerkleNode.objects.using(self.using).filter(level=level, index=index).values_list("hash", flat=True)
        for value in row:
            return bytes(value)
        raise KeyError((level, index))

    def get_nodes(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        if not coords:
            return []
        wanted = list(dict.fromkeys(coords))
        conn = connections[self.using]
        table = conn.ops.quote_name(MerkleNode._meta.db_table)
        level, index, hash_ = (conn.ops.quote_name(c) for c in ("level", "index", "hash"))
        params: list[int] = []
        for lv, ix in wanted:
            params += [lv, ix]
        rows = ", ".join(["(%s, %s)"] * len(wanted))
        sql = f"SELECT {level}, {index}, {hash_} FROM {table} WHERE ({level}, {index}) IN ({rows})"  # noqa: S608
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            found = {(lv, ix): bytes(h) for lv, ix, h in cursor.fetchall()}
        missing = [c for c in wanted if c not in found]
        if missing:
            raise KeyError(missing[0])
        return [found[c] for c in coords]


# --------------------------------------------------------------------------- log state


def log_origin() -> str:
    return settings.ECARD_LOG_ORIGIN


def current_size() -> int:
    """Committed size of the log (entries 0 .. size-1 exist, with all their nodes)."""
    return LogState.objects.filter(pk=LogState.SINGLETON).values_list("size", flat=True).first() or 0


def catch_up() -> None:
    """Sequence the committed pending entries first, so a read shows the current log (bounded;
    see :func:`audit.services.catch_up`). Entries are in the log once sequenced."""
    from audit import services  # services builds on these selectors

    services.catch_up()


def current_head(*, fresh: bool = True) -> tuple[int, bytes]:
    """``(size, root)`` of the committed log, from the frontier (consistent in one read);
    ``fresh``: sequence what is pending first."""
    if fresh:
        catch_up()
    state = LogState.objects.filter(pk=LogState.SINGLETON).first()
    if state is None or not state.frontier:
        return 0, CompactRange().root()
    compact = CompactRange.from_dict(state.frontier)
    return compact.size, compact.root()


def root_at(size: int) -> bytes:
    """Root hash of the first ``size`` entries (ProofError beyond the current size)."""
    if size > current_size():
        raise ProofError(f"the log has fewer than {size} entries")
    return tree_root(DbNodeStore(), size)


def inclusion_proof_for(index: int, tree_size: int) -> list[bytes]:
    if tree_size > current_size():
        raise ProofError(f"the log has fewer than {tree_size} entries")
    return inclusion_proof(DbNodeStore(), index, tree_size)


def inclusion_with_root(index: int, tree_size: int) -> tuple[list[bytes], bytes]:
    """Inclusion proof and the root it leads to, from one query for all the nodes."""
    if tree_size > current_size():
        raise ProofError(f"the log has fewer than {tree_size} entries")
    groups = [*inclusion_proof_coords(index, tree_size), frontier_coords(tree_size)]
    *proof, root = resolve_groups(DbNodeStore(), groups)
    return proof, root


def consistency_with_roots(first: int, second: int) -> tuple[list[bytes], bytes, bytes]:
    """Consistency proof ``first`` → ``second`` and both roots, from one query for all the nodes."""
    if second > current_size():
        raise ProofError(f"the log has fewer than {second} entries")
    if second == 0:  # 0 -> 0: nothing to prove, and the empty tree has no nodes to fetch
        consistency_proof_coords(first, second)  # ProofError unless first == 0
        return [], EMPTY_ROOT, EMPTY_ROOT
    groups = [*consistency_proof_coords(first, second), frontier_coords(second)]
    if first:
        groups.append(frontier_coords(first))
    resolved = resolve_groups(DbNodeStore(), groups)
    if not first:
        return resolved[:-1], EMPTY_ROOT, resolved[-1]
    return resolved[:-2], resolved[-1], resolved[-2]


def consistency_proof_for(first: int, second: int) -> list[bytes]:
    if second > current_size():
        raise ProofError(f"the log has fewer than {second} entries")
    return consistency_proof(DbNodeStore(), first, second)


# --------------------------------------------------------------------------- entries


# The card numbers (CINs) a user holds. Cards sit above audit (docs/ARCHITECTURE.md, "Layers"), so
# the cards app registers this lookup (cards.apps.CardsConfig.ready) and audit never imports it.
CardsHeldBy = Callable[[int], Iterable[str]]
_cards_held_by: CardsHeldBy | None = None


def register_card_holdings(lookup: CardsHeldBy) -> None:
    """Install the lookup from a user id to the CINs of the cards that user holds."""
    global _cards_held_by
    _cards_held_by = lookup


def held_card_cins(user: User | None) -> Iterable[str]:
    """The CINs of the cards ``user`` holds, through the registered lookup (none if no user)."""
    user_id = getattr(user, "pk", None)
    if user_id is None:
        return ()
    if _cards_held_by is None:
        raise RuntimeError("no card holdings lookup registered (audit.selectors.register_card_holdings)")
    return _cards_held_by(user_id)


def entries_for(user: User | None, *, card_cins: Iterable[str]) -> QuerySet[AuditEntry]:
    """The sequenced entries ``user`` may read (pending ones are sequenced first).

    ``card_cins`` are the CINs of the cards ``user`` holds (a citizen reads their cards' entries);
    callers get them from ``cards.selectors.card_cins_held_by`` or :func:`held_card_cins`."""
    who = principal(user)
    if not who.is_authenticated:
        return AuditEntry.objects.none()
    catch_up()
    entries = AuditEntry.objects.filter(index__isnull=False)
    if who.is_agency or who.is_regulator:
        return entries
    if who.bank_ids:
        # Never match on an empty value: entries that concern no organisation have slug "".
        return entries.filter(organization_slug__in=who.bank_slugs).exclude(organization_slug="")
    if who.is_citizen:
        return entries.filter(card_cin__in=card_cins).exclude(card_cin="")
    return AuditEntry.objects.none()


def can_export(user: User | None) -> bool:
    """Only the agency and regulators read the whole log, so only they download it."""
    who = principal(user)
    return who.is_agency or who.is_regulator


class UtcIsoDateTimeField(django_filters.fields.IsoDateTimeField):
    """An ISO 8601 datetime, converted to UTC: PostgreSQL refuses UTC offsets beyond ±15:59 (Python
    accepts up to ±23:59), which made ``?since=...+23:20`` a 500 there."""

    def to_python(self, value: object) -> dt.datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(dt.UTC)
        except (OverflowError, ValueError):
            raise forms.ValidationError("Enter a date and time within years 1 to 9999 (UTC).", code="invalid") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class EntryFilter(django_filters.FilterSet):
    """Filters of the log browser and the entries API."""

    card = django_filters.CharFilter(field_name="card_cin", label="Card (CIN)")
    organization = django_filters.CharFilter(field_name="organization_slug", label="Organisation (slug)")
    action = django_filters.CharFilter(field_name="action", label="Action")
    outcome = django_filters.ChoiceFilter(field_name="outcome", choices=AuditEntry.Outcome.choices, label="Outcome")
    since = UtcIsoDateTimeFilter(field_name="time", lookup_expr="gte", label="From (ISO 8601)")
    until = UtcIsoDateTimeFilter(field_name="time", lookup_expr="lt", label="Until (ISO 8601)")

    class Meta:
        model = AuditEntry
        fields = ("card", "organization", "action", "outcome", "since", "until")


# --------------------------------------------------------------------------- checkpoints


def checkpoints() -> QuerySet[Checkpoint]:
    return Checkpoint.objects.prefetch_related("cosignatures")


def latest_checkpoint() -> Checkpoint | None:
    return Checkpoint.objects.prefetch_related("cosignatures").order_by("-size").first()


@dataclass(frozen=True)
class EntryProof:
    """An entry's inclusion proof checked against a signed (or current) root."""

    tree_size: int
    root: bytes
    proof: list[bytes]
    checkpoint: Checkpoint | None
    verified: bool
    error: str = ""


def checked_inclusion(entry: AuditEntry) -> EntryProof:
    """The entry's inclusion proof in the latest checkpoint that covers it (else the current head),
    verified here against that root with the entry's leaf hash recomputed from its columns."""
    if entry.index is None:
        raise ProofError("the entry is not sequenced yet, so no checkpoint covers it")
    checkpoint = Checkpoint.objects.filter(size__gt=entry.index).order_by("-size").first()
    if checkpoint is not None:
        size, root = checkpoint.size, bytes(checkpoint.root_hash)
    else:
        size, root = current_head(fresh=False)
    proof = inclusion_proof_for(entry.index, size)
    try:
        verify_inclusion(entry_leaf_hash(entry.as_entry()), entry.index, size, proof, root)
    except (ProofError, ValueError) as exc:
        return EntryProof(size, root, proof, checkpoint, False, str(exc))
    return EntryProof(size, root, proof, checkpoint, True)


# --------------------------------------------------------------------------- the log's key (read-only)


def published_verifier_key() -> str | None:
    """The log's verifier key if its signing key exists (never creates one; no secret is read)."""
    public_key = checkpoint_signer().public_key()
    return vkey_for(public_key, log_origin()) if public_key is not None else None


@dataclass(frozen=True)
class CheckpointCheck:
    """Result of checking a checkpoint someone kept against the log's key and current head."""

    ok: bool
    message: str
    signature_valid: bool = False
    size: int | None = None
    root: bytes | None = None
    head_size: int | None = None
    head_root: bytes | None = None
    proof: tuple[bytes, ...] = ()


class _CheckedCheckpoint(TypedDict):
    """The :class:`CheckpointCheck` fields known once a checkpoint's signature verified."""

    signature_valid: bool
    size: int
    root: bytes
    head_size: int
    head_root: bytes


def check_checkpoint(text: str, verifier_key: str | None = None) -> CheckpointCheck:
    """Verify a pasted checkpoint's signature with the log's verifier key, then that the current
    log is consistent with it (its root at that size matches and an RFC 9162 consistency proof
    from that size to the current head verifies)."""
    vkey = verifier_key or published_verifier_key()
    if vkey is None:
        return CheckpointCheck(False, "The log has no signing key yet, so it has signed no checkpoint.")
    note = text.replace("\r\n", "\n").strip("\n") + "\n"
    try:
        parse_vkey(vkey)
        checkpoint = parse_checkpoint(note, vkey, origin=log_origin())
    except SignatureError:
        return CheckpointCheck(False, "Signature invalid: this checkpoint was not signed by the log's key.")
    except CheckpointError as exc:
        return CheckpointCheck(False, f"Malformed checkpoint: {exc}")
    head_size, head_root = current_head()
    base = _CheckedCheckpoint(
        signature_valid=True, size=checkpoint.size, root=checkpoint.root, head_size=head_size, head_root=head_root
    )
    if checkpoint.size > head_size:
        return CheckpointCheck(
            False, f"NOT consistent: the checkpoint covers {checkpoint.size} entries, the log has {head_size}.", **base
        )
    proof = consistency_proof_for(checkpoint.size, head_size)
    try:
        if root_at(checkpoint.size) != checkpoint.root:
            raise ProofError("the log's root at that size differs")
        verify_consistency(checkpoint.size, head_size, checkpoint.root, head_root, proof)
    except ProofError as exc:
        return CheckpointCheck(False, f"NOT consistent with the current log: {exc}.", **base, proof=tuple(proof))
    return CheckpointCheck(
        True,
        f"Valid signature, and the current log ({head_size} entries) is consistent with it.",
        **base,
        proof=tuple(proof),
    )


# --------------------------------------------------------------------------- security event log


def can_read_security_events(user: User | None) -> bool:
    """The agency and regulators read the security event log; banks, citizens and others do not
    (for them it does not exist: 404)."""
    who = principal(user)
    return who.is_agency or who.is_regulator


def security_events_for(user: User | None) -> QuerySet[SecurityEvent]:
    if not can_read_security_events(user):
        return SecurityEvent.objects.none()
    return SecurityEvent.objects.select_related(None).order_by("-last_seen", "-id")


class SecurityEventFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=SecurityEvent.Kind.choices)
    username = django_filters.CharFilter(field_name="username", lookup_expr="iexact", label="Account")
    source = django_filters.CharFilter(field_name="source", label="Client address")
    since = UtcIsoDateTimeFilter(field_name="last_seen", lookup_expr="gte", label="Since (ISO 8601)")
    until = UtcIsoDateTimeFilter(field_name="last_seen", lookup_expr="lt", label="Until (ISO 8601)")

    class Meta:
        model = SecurityEvent
        fields = ("kind", "username", "source", "since", "until")
