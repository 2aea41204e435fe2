"""The cheap exchange (issue 15): channel states sealed under a short-lived per-process data key
(no KEK unwrap per exchange, a KEK rotation still ends older states), and an exchange's audit
entries inserted as one statement with the log's order and sequencing unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEntry
from audit.services import events_together, record_event, sequence_pending
from issuers import custody
from issuers.custody import sealing
from issuers.custody_models import KeyEncryptionKey
from issuers.keyvault import KekUnavailableError, UnwrapError, get_backend
from issuers.models import Organization

pytestmark = pytest.mark.django_db

STATE = {"s_enc": "00" * 16, "s_mac": "11" * 16, "mcv": "22" * 16, "counter": 7}


@pytest.fixture
def org() -> Organization:
    return Organization.objects.create(name="Seal Bank", slug="seal-bank", kind="bank")


def test_sealing_and_opening_unwrap_no_kek_once_the_data_key_is_known(org: Organization, kek_unwraps: list) -> None:
    custody.ensure_org_kek(org)
    kek_unwraps.clear()
    blobs = [custody.seal_channel_state(org, {**STATE, "counter": n}, context="s1") for n in range(5)]
    for n, blob in enumerate(blobs):
        assert custody.open_channel_state(org, blob, context="s1")["counter"] == n
        for value in ("00" * 16, "11" * 16):
            assert bytes.fromhex(value) not in blob and value.encode() not in blob
    # the process wrapped its data key once when it made it; it never unwrapped a KEK for these
    assert not [aad for aad in kek_unwraps if b"ecard-channel" in aad]


def test_another_process_unwraps_a_data_key_once(org: Organization, kek_unwraps: list) -> None:
    blobs = [custody.seal_channel_state(org, STATE, context=f"s{n}") for n in range(3)]
    sealing.forget_data_keys()  # the next exchange lands on another web process
    kek_unwraps.clear()
    for n, blob in enumerate(blobs):
        assert custody.open_channel_state(org, blob, context=f"s{n}") == STATE
    assert len([aad for aad in kek_unwraps if b"ecard-channel-data-key" in aad]) == 1


def test_a_sealed_state_opens_only_in_its_context_organisation_and_unaltered(org: Organization) -> None:
    other = Organization.objects.create(name="Other Bank", slug="other-bank", kind="bank")
    custody.ensure_org_kek(other)
    blob = custody.seal_channel_state(org, STATE, context="s1")
    with pytest.raises(UnwrapError):
        custody.open_channel_state(org, blob, context="s2")
    with pytest.raises(custody.CustodyError):
        custody.open_channel_state(other, blob, context="s1")
    for index in (0, 5, 30, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[index] ^= 1
        with pytest.raises(custody.CustodyError):
            custody.open_channel_state(org, bytes(tampered), context="s1")
    with pytest.raises(UnwrapError):
        custody.open_channel_state(org, blob[:40], context="s1")


def test_a_kek_rotation_ends_states_sealed_before_it_whatever_the_process_remembers(
    org: Organization, django_capture_on_commit_callbacks: Any
) -> None:
    blob = custody.seal_channel_state(org, STATE, context="s1")
    assert custody.open_channel_state(org, blob, context="s1") == STATE  # its data key is in memory
    with django_capture_on_commit_callbacks(execute=True):
        custody.rotate_kek(org)
    with pytest.raises(KekUnavailableError):
        custody.open_channel_state(org, blob, context="s1")
    # sealing goes on under the new KEK (the seal checks its data key's KEK is the active one)
    fresh = custody.seal_channel_state(org, STATE, context="s1")
    assert int.from_bytes(fresh[1:5], "big") == 2
    assert custody.open_channel_state(org, fresh, context="s1") == STATE


def test_a_seal_after_a_rotation_elsewhere_uses_the_new_kek(
    org: Organization, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    custody.seal_channel_state(org, STATE, context="s1")
    monkeypatch.setattr(sealing, "KEK_CHECK_INTERVAL", 0.0)  # no open of this exchange vouched for it
    with django_capture_on_commit_callbacks(execute=True):
        custody.rotate_kek(org)  # as if in another process: this one keeps its data key
    blob = custody.seal_channel_state(org, STATE, context="s1")
    assert int.from_bytes(blob[1:5], "big") == 2
    assert custody.open_channel_state(org, blob, context="s1") == STATE


def kek_reads(captured: CaptureQueriesContext) -> int:
    return sum(1 for q in captured.captured_queries if '"issuers_keyencryptionkey"' in q["sql"])


def test_an_open_vouched_for_within_the_second_reads_no_kek(org: Organization) -> None:
    blob = custody.seal_channel_state(org, STATE, context="s1")  # the seal saw its KEK active
    with CaptureQueriesContext(connection) as captured:
        for _ in range(3):
            assert custody.open_channel_state(org, blob, context="s1") == STATE
    assert kek_reads(captured) == 0


def test_past_the_second_an_open_reads_the_kek_again(org: Organization, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = custody.seal_channel_state(org, STATE, context="s1")
    monkeypatch.setattr(sealing, "KEK_CHECK_INTERVAL", 0.0)
    with CaptureQueriesContext(connection) as captured:
        for _ in range(2):
            assert custody.open_channel_state(org, blob, context="s1") == STATE
    assert kek_reads(captured) == 2


def test_a_kek_destroyed_by_another_process_stops_opens_here_past_the_second(
    org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = custody.seal_channel_state(org, STATE, context="s1")
    assert custody.open_channel_state(org, blob, context="s1") == STATE  # vouched for, data key held
    # another process destroys the KEK: this one is not told, and holds the data key
    KeyEncryptionKey.objects.filter(organization=org).update(state=KeyEncryptionKey.State.DESTROYED)
    monkeypatch.setattr(sealing, "KEK_CHECK_INTERVAL", 0.0)  # the second has passed
    with pytest.raises(KekUnavailableError):
        custody.open_channel_state(org, blob, context="s1")


def test_a_rotation_in_this_process_stops_its_vouched_opens_at_once(
    org: Organization, django_capture_on_commit_callbacks: Any
) -> None:
    blob = custody.seal_channel_state(org, STATE, context="s1")
    assert custody.open_channel_state(org, blob, context="s1") == STATE
    with django_capture_on_commit_callbacks(execute=True):
        custody.rotate_kek(org)
    with CaptureQueriesContext(connection) as captured, pytest.raises(KekUnavailableError):
        custody.open_channel_state(org, blob, context="s1")
    assert kek_reads(captured) == 1  # not vouched for any more: read, found destroyed


def test_states_sealed_in_the_first_format_still_open(org: Organization) -> None:
    kek = custody.ensure_org_kek(org)
    plaintext = b'{"counter":7}'
    inner = get_backend(kek.backend).wrap(kek.ref, plaintext, sealing._state_aad(org, "s1", kek.version))
    blob = b"\x01" + kek.version.to_bytes(4, "big") + inner
    assert custody.open_channel_state(org, blob, context="s1") == {"counter": 7}


# ---------------------------------------------------------------- audit entries of one exchange


def audit_inserts(captured: CaptureQueriesContext) -> int:
    return sum(1 for q in captured.captured_queries if q["sql"].startswith('INSERT INTO "audit_auditentry"'))


def event(n: int) -> dict[str, Any]:
    return {"action": "test.event", "subject_type": "test", "subject_id": n, "details": {"n": n}}


def test_an_exchanges_entries_go_in_as_one_insert_in_order() -> None:
    with transaction.atomic(), CaptureQueriesContext(connection) as captured, events_together() as rows:
        for n in range(5):
            record_event(**event(n))
        assert audit_inserts(captured) == 0 and len(rows) == 5
    assert audit_inserts(captured) == 1
    entries = list(AuditEntry.objects.filter(action="test.event").order_by("pk"))
    assert [e.details["n"] for e in entries] == [0, 1, 2, 3, 4] and all(e.index is None for e in entries)
    sequence_pending()
    indexed = list(AuditEntry.objects.filter(action="test.event").order_by("index"))
    assert [e.details["n"] for e in indexed] == [0, 1, 2, 3, 4]
    indices = [e.index for e in indexed]
    assert indices == list(range(indices[0], indices[0] + 5))  # gapless, in the order asked for


def test_a_rolled_back_savepoint_takes_its_entry_and_a_failed_block_takes_them_all() -> None:
    with transaction.atomic(), events_together():
        record_event(**event(1))
        try:
            with transaction.atomic():
                record_event(**event(2))
                raise RuntimeError("refused")
        except RuntimeError:
            pass
        record_event(**event(3))
    assert [e.details["n"] for e in AuditEntry.objects.filter(action="test.event").order_by("pk")] == [1, 3]
    with pytest.raises(RuntimeError), transaction.atomic(), events_together():
        record_event(**event(4))
        raise RuntimeError("the exchange failed")
    assert not AuditEntry.objects.filter(action="test.event", subject_id="4").exists()
