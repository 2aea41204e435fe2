"""The log in the database: appends from real services, sequencing, the stored tree, rollback, checkpoints
and key custody."""

from __future__ import annotations

import base64
import json
import math

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test.utils import CaptureQueriesContext

from audit import selectors, services, tasks
from audit.checkpoint import parse_checkpoint, parse_vkey
from audit.export_format import canonical_leaf_bytes, entry_leaf_hash
from audit.merkle import CompactRange, consistency_proof_coords, frontier_coords, root_from_leaves
from audit.models import AuditEntry, Checkpoint, LogState, MerkleNode
from cards import services as card_services
from issuers import log_signing
from issuers import services as issuer_services
from issuers.custody_models import KeySet
from tests.factories import World, build_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def world() -> World:
    """The demo world with its entries sequenced (its transactions commit into the test's own, so
    their on-commit sequencing never runs here)."""
    world = build_world()
    services.sequence_pending()
    return world


def stored_leaves() -> list[bytes]:
    return [canonical_leaf_bytes(row.as_entry()) for row in AuditEntry.objects.order_by("index")]


def test_appends_are_pending_until_sequenced() -> None:
    build_world()
    n = AuditEntry.objects.count()
    assert n > 20
    # the services' transactions queued their entries: no index, no leaf hash, no node yet
    assert AuditEntry.objects.filter(index__isnull=True, leaf_hash__isnull=True).count() == n
    assert MerkleNode.objects.count() == 0
    pending_order = list(AuditEntry.objects.order_by("pk").values_list("pk", flat=True))
    # batches of 7: one transaction each, indices continue from batch to batch
    assert services.sequence_pending(limit=7, max_batches=2) == 14
    assert services.sequence_pending(limit=7) == n - 14
    assert services.sequence_pending() == 0
    # insertion order, indices 0..n-1
    assert list(AuditEntry.objects.order_by("index").values_list("pk", flat=True)) == pending_order
    assert list(AuditEntry.objects.order_by("index").values_list("index", flat=True)) == list(range(n))
    assert LogState.objects.get().size == n
    assert CompactRange.from_dict(LogState.objects.get().frontier).root() == root_from_leaves(stored_leaves())


def test_real_services_build_the_tree(world: World) -> None:
    n = AuditEntry.objects.count()
    assert n > 20
    assert list(AuditEntry.objects.order_by("index").values_list("index", flat=True)) == list(range(n))
    state = LogState.objects.get()
    assert state.size == n
    expected = root_from_leaves(stored_leaves())
    assert CompactRange.from_dict(state.frontier).root() == expected
    assert selectors.root_at(n) == expected
    # every perfect subtree is stored exactly once, and level 0 holds the leaf hashes
    assert MerkleNode.objects.count() == 2 * n - n.bit_count()
    for row in AuditEntry.objects.all():
        assert bytes(row.leaf_hash) == entry_leaf_hash(row.as_entry())
        assert bytes(MerkleNode.objects.get(level=0, index=row.index).hash) == bytes(row.leaf_hash)
    # roots of every prefix come from the stored nodes
    leaves = stored_leaves()
    for size in range(n + 1):
        assert selectors.root_at(size) == root_from_leaves(leaves[:size])


def test_entries_carry_actor_subject_card_and_no_key_material(world: World) -> None:
    issued = AuditEntry.objects.filter(action="card.issued").first()
    entry = issued.as_entry()
    assert entry["card"] == issued.card_cin and entry["subject"] == {"type": "card", "id": issued.card_cin}
    assert entry["organisation"] == "agency"
    stored = AuditEntry.objects.filter(action="custody.key_stored")
    text = json.dumps([row.as_entry() for row in AuditEntry.objects.all()])
    for keyset in KeySet.objects.all():
        assert keyset.wrapped.hex() not in text.lower()
    assert all(
        "key" not in k or k in {"key_length", "key_scheme", "key_sets_rewrapped", "key_version"}
        for row in stored
        for k in row.details
    )


def test_append_is_one_insert_and_takes_no_lock(world: World) -> None:
    """Recording an event is one INSERT, however large the log: no lock, no read of the log's state."""
    for _ in range(3):
        with transaction.atomic(), CaptureQueriesContext(transaction.get_connection()) as ctx:
            row = services.record_event(action="test.ping", subject_type="test", subject_id="x")
        assert len(ctx.captured_queries) == 1
        sql = ctx.captured_queries[0]["sql"].upper()
        assert sql.startswith("INSERT INTO") and "AUDIT_AUDITENTRY" in sql
        assert "LOGSTATE" not in sql and "FOR UPDATE" not in sql and "MERKLENODE" not in sql
        assert row.index is None and row.leaf_hash is None


def test_sequencing_is_constant_work_per_batch(world: World) -> None:
    """A sequencing batch is a fixed handful of queries, however large the log: no pass over the leaves."""
    counts = []
    for k in (1, 5, 40):
        with transaction.atomic():
            for i in range(k):
                services.record_event(action="test.ping", subject_type="test", subject_id=str(i))
        with CaptureQueriesContext(transaction.get_connection()) as ctx:
            assert services.sequence_pending() == k
        counts.append(len(ctx.captured_queries))
        sql = " ".join(q["sql"] for q in ctx.captured_queries).upper()
        assert "COUNT(" not in sql and "MAX(" not in sql
    assert counts[0] == counts[1] == counts[2] <= 8
    n = AuditEntry.objects.count()
    assert selectors.root_at(n) == root_from_leaves(stored_leaves())


@pytest.mark.django_db(transaction=True)
def test_commit_sequences_its_entries(settings) -> None:
    """Right after the appending transaction commits, its entries are sequenced (one on-commit hook
    per transaction); a rolled-back transaction's entries never get an index."""
    settings.ECARD_AUDIT_SEQUENCE_ON_COMMIT_INTERVAL = 0  # the SQLite default; PostgreSQL's is 50 ms
    with transaction.atomic():
        first = services.record_event(action="test.a", subject_type="test", subject_id="1")
        second = services.record_event(action="test.b", subject_type="test", subject_id="2")
        hooks = [f for _sids, f, _robust in transaction.get_connection().run_on_commit]
        assert len(hooks) == 1
        assert AuditEntry.objects.get(pk=first.pk).index is None  # not before the commit
    with pytest.raises(RuntimeError), transaction.atomic():
        services.record_event(action="test.rolled_back", subject_type="test", subject_id="3")
        raise RuntimeError("the change failed")
    with transaction.atomic():
        third = services.record_event(action="test.c", subject_type="test", subject_id="4")
    assert [AuditEntry.objects.get(pk=row.pk).index for row in (first, second, third)] == [0, 1, 2]
    assert not AuditEntry.objects.filter(index__isnull=True).exists()
    assert selectors.root_at(3) == root_from_leaves(stored_leaves())
    assert MerkleNode.objects.count() == 2 * 3 - (3).bit_count()


@pytest.mark.django_db(transaction=True)
def test_on_commit_runs_are_spaced_per_process_and_reads_catch_up(settings) -> None:
    settings.ECARD_AUDIT_SEQUENCE_ON_COMMIT_INTERVAL = 3600
    services._last_on_commit_run = -math.inf
    rows = []
    for i in range(3):
        with transaction.atomic():
            rows.append(services.record_event(action="test.a", subject_type="test", subject_id=str(i)))
    # the first commit sequenced; the next two waited for the interval (beat's job) ...
    assert [AuditEntry.objects.get(pk=row.pk).index for row in rows] == [0, None, None]
    assert selectors.current_size() == 1
    # ... and a read of the log sequences them first
    assert selectors.current_head()[0] == 3
    assert [AuditEntry.objects.get(pk=row.pk).index for row in rows] == [0, 1, 2]
    services._last_on_commit_run = -math.inf


def test_sequencer_beat_task(world: World) -> None:
    from django.conf import settings

    schedule = settings.CELERY_BEAT_SCHEDULE["audit-sequence"]
    assert schedule["task"] == "audit.tasks.sequence" and schedule["schedule"] == 1
    with transaction.atomic():
        services.record_event(action="test.a", subject_type="test", subject_id="1")
    assert tasks.sequence.delay().get() == {"sequenced": 1}
    assert tasks.sequence.delay().get() == {"sequenced": 0}
    assert not AuditEntry.objects.filter(index__isnull=True).exists()


def test_failed_change_leaves_no_entry_and_no_node(world: World) -> None:
    before = (AuditEntry.objects.count(), MerkleNode.objects.count(), LogState.objects.get().size)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.record_event(action="test.rolled_back", subject_type="test", subject_id="1")
        raise RuntimeError("the change failed")
    assert (AuditEntry.objects.count(), MerkleNode.objects.count(), LogState.objects.get().size) == before
    assert services.sequence_pending() == 0  # the rolled-back entry never reaches the sequencer
    with transaction.atomic():
        row = services.record_event(action="test.after", subject_type="test", subject_id="2")
    assert services.sequence_pending() == 1
    row.refresh_from_db()
    assert row.index == before[0]  # no gap


@pytest.mark.django_db(transaction=True)
def test_record_event_needs_the_callers_transaction() -> None:
    with pytest.raises(RuntimeError):
        services.record_event(action="x.y", subject_type="t", subject_id="1")


def test_details_are_kept_as_given_and_receipts_as_hex(world: World) -> None:
    with transaction.atomic():
        row = services.record_event(
            action="job.done",
            subject_type="job",
            subject_id=7,
            receipt=b"\xab\x01",
            details={"aids": ("A0000001", "A0000002"), "n": 3, "nested": {"ok": True}},
        )
    services.sequence_pending()
    row.refresh_from_db()
    entry = row.as_entry()
    assert entry["receipt"] == "ab01"
    assert entry["details"] == {"aids": ["A0000001", "A0000002"], "n": 3, "nested": {"ok": True}}
    assert bytes(row.leaf_hash) == entry_leaf_hash(entry)


def test_floats_are_refused_with_the_change(world: World) -> None:
    before = AuditEntry.objects.count()
    with pytest.raises(ValueError), transaction.atomic():
        services.record_event(action="x.y", subject_type="t", subject_id="1", details={"ratio": 0.5})
    assert AuditEntry.objects.count() == before


def test_missing_state_row_is_rebuilt_from_the_nodes(world: World) -> None:
    n = AuditEntry.objects.count()
    root = selectors.root_at(n)
    LogState.objects.all().delete()
    with transaction.atomic():
        row = services.record_event(action="test.resume", subject_type="test", subject_id="1")
    services.sequence_pending()
    row.refresh_from_db()
    assert row.index == n
    assert selectors.root_at(n) == root
    assert selectors.root_at(n + 1) == root_from_leaves(stored_leaves())


def test_checkpoint_signed_with_custody_key_of_the_agency(world: World) -> None:
    checkpoint, created = services.ensure_checkpoint()
    assert created
    keyset = KeySet.objects.get(purpose="checkpoint_signing", state="active")
    assert keyset.organization == world.agency and keyset.algorithm == "ed25519"
    assert AuditEntry.objects.filter(action="custody.key_stored", details__purpose="checkpoint_signing").exists()
    vkey = services.log_verifier_key()
    assert vkey == selectors.published_verifier_key()
    assert parse_vkey(vkey).name == "ecard.example/audit-log"
    parsed = parse_checkpoint(checkpoint.text, vkey, origin="ecard.example/audit-log")
    n = AuditEntry.objects.count()
    assert parsed.size == checkpoint.size == n
    assert parsed.root == bytes(checkpoint.root_hash) == root_from_leaves(stored_leaves())
    # idempotent while the log does not grow; a new one after it grows; the key is reused
    again, created = services.ensure_checkpoint()
    assert not created and again.pk == checkpoint.pk
    card_services.issue_card(agency=world.agency, holder=None)
    newer = services.make_checkpoint()
    assert newer.size == AuditEntry.objects.count() > n and Checkpoint.objects.count() == 2
    assert KeySet.objects.filter(purpose="checkpoint_signing").count() == 1
    parse_checkpoint(newer.text, vkey)


def test_checkpoint_signature_fails_with_another_key(world: World) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.checkpoint import SignatureError, vkey_for

    checkpoint = services.make_checkpoint()
    other = vkey_for(Ed25519PrivateKey.generate().public_key(), "ecard.example/audit-log")
    with pytest.raises(SignatureError):
        parse_checkpoint(checkpoint.text, other)


def test_beat_task_and_command(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from django.conf import settings

    schedule = settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert schedule["task"] == "audit.tasks.make_checkpoint" and schedule["schedule"] == 300
    first = tasks.make_checkpoint.delay().get()
    assert first["created"] is True
    assert tasks.make_checkpoint.delay().get() == {"size": first["size"], "created": False}
    with transaction.atomic():
        issuer_services.create_organization(name="Gamma Regulator", slug="gamma", kind="regulator")
    call_command("audit_checkpoint", "--vkey")
    out = capsys.readouterr()
    assert out.out.startswith("ecard.example/audit-log\n") and "signed: checkpoint" in out.err
    assert Checkpoint.objects.latest().size == first["size"] + 1
    size_line = out.out.splitlines()[1]
    assert int(size_line) == first["size"] + 1
    base64.b64decode(out.out.splitlines()[2], validate=True)


def test_checkpoint_refuses_when_nodes_were_tampered(world: World) -> None:
    log_signing.signing_keyset()  # storing the key appends entries: do it before taking the size
    services.sequence_pending()
    n = AuditEntry.objects.count()
    level, index = frontier_coords(n)[0]
    MerkleNode.objects.filter(level=level, index=index).update(hash=b"\x00" * 32)
    with pytest.raises(services.LogCorruptError):
        services.make_checkpoint()


def test_never_signs_a_head_inconsistent_with_the_last_checkpoint(world: World) -> None:
    signed = services.make_checkpoint()
    for _ in range(3):
        card_services.issue_card(agency=world.agency, holder=None)
    n = AuditEntry.objects.count()
    coords = [c for group in consistency_proof_coords(signed.size, n) for c in group]
    coords = [c for c in coords if c not in frontier_coords(n)]  # a node of the old part only
    level, index = coords[0]
    MerkleNode.objects.filter(level=level, index=index).update(hash=b"\x01" * 32)
    with pytest.raises(services.LogCorruptError, match=f"not consistent with its checkpoint of size {signed.size}"):
        services.make_checkpoint()
    assert Checkpoint.objects.count() == 1
