"""Reads of the audit log, scoped to what the caller may see (the API and the portal share them).

Visibility:
- the agency and regulators read every entry (and may export the whole log);
- a bank reads the entries whose ``organization_slug`` is its own;
- a citizen reads the entries of their own cards (``card_cin`` of a card they hold);
- anyone else reads nothing.

Checkpoints, tree heads and proofs are hashes only: every signed-in user may read them (an
inclusion proof is only served for an entry the caller can see).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import django_filters
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.db.models import QuerySet

from audit.export_format import entry_leaf_hash
from audit.merkle import (
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    tree_root,
    verify_inclusion,
)
from audit.models import AuditEntry, Checkpoint, LogState, MerkleNode
from cards.models import Card
from issuers.models import Organization
from issuers.roles import principal

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


def current_head() -> tuple[int, bytes]:
    """``(size, root)`` of the committed log, from the frontier (consistent in one read)."""
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


def consistency_proof_for(first: int, second: int) -> list[bytes]:
    if second > current_size():
        raise ProofError(f"the log has fewer than {second} entries")
    return consistency_proof(DbNodeStore(), first, second)


# --------------------------------------------------------------------------- entries


def entries_for(user: User | None) -> QuerySet[AuditEntry]:
    who = principal(user)
    if not who.is_authenticated:
        return AuditEntry.objects.none()
    entries = AuditEntry.objects.all()
    if who.is_agency or who.is_regulator:
        return entries
    if who.bank_ids:
        slugs = Organization.objects.filter(pk__in=who.bank_ids).values("slug")
        return entries.filter(organization_slug__in=slugs)
    if who.is_citizen:
        cins = Card.objects.filter(holder_id=who.user_id).values("cin")
        return entries.filter(card_cin__in=cins).exclude(card_cin="")
    return AuditEntry.objects.none()


def can_export(user: User | None) -> bool:
    """Only the agency and regulators read the whole log, so only they download it."""
    who = principal(user)
    return who.is_agency or who.is_regulator


class EntryFilter(django_filters.FilterSet):
    """Filters of the log browser and the entries API."""

    card = django_filters.CharFilter(field_name="card_cin", label="Card (CIN)")
    organization = django_filters.CharFilter(field_name="organization_slug", label="Organisation (slug)")
    action = django_filters.CharFilter(field_name="action", label="Action")
    outcome = django_filters.ChoiceFilter(field_name="outcome", choices=AuditEntry.Outcome.choices, label="Outcome")
    since = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="gte", label="From (ISO 8601)")
    until = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="lt", label="Until (ISO 8601)")

    class Meta:
        model = AuditEntry
        fields = ("card", "organization", "action", "outcome", "since", "until")


# --------------------------------------------------------------------------- checkpoints


def checkpoints() -> QuerySet[Checkpoint]:
    return Checkpoint.objects.all()


def latest_checkpoint() -> Checkpoint | None:
    return Checkpoint.objects.order_by("-size").first()


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
    checkpoint = Checkpoint.objects.filter(size__gt=entry.index).order_by("-size").first()
    if checkpoint is not None:
        size, root = checkpoint.size, bytes(checkpoint.root_hash)
    else:
        size, root = current_head()
    proof = inclusion_proof_for(entry.index, size)
    try:
        verify_inclusion(entry_leaf_hash(entry.as_entry()), entry.index, size, proof, root)
    except (ProofError, ValueError) as exc:
        return EntryProof(size, root, proof, checkpoint, False, str(exc))
    return EntryProof(size, root, proof, checkpoint, True)
