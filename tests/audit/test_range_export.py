"""Range exports from the real log (``GET /api/v1/audit/export?from=M&to=N``, ``audit_export --from``)
and entries from an index on: verified incrementally; a row edited in the database is named."""

from __future__ import annotations

import io

import pytest
from rest_framework.test import APIClient

from audit import services
from audit.models import AuditEntry
from audit.verify import VerificationError, verify_export
from cards import services as card_services
from tests.factories import World

pytestmark = pytest.mark.django_db


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_range_export_over_the_api_extends_a_verified_state(world: World) -> None:
    client = APIClient()
    client.force_authenticate(world.users["regulator"])
    vkey = services.log_verifier_key()
    first = services.make_checkpoint()
    for _ in range(4):
        card_services.issue_card(agency=world.agency, holder=None)
    second = services.make_checkpoint()
    full = client.get(f"/api/v1/audit/export?to={first.size}")
    assert full.status_code == 200
    state = verify_export(io.BytesIO(body(full)), key=vkey).state
    assert state is not None and state.size == first.size

    part = client.get(f"/api/v1/audit/export?from={first.size}&to={second.size}")
    assert part.status_code == 200 and f"audit-log-{first.size}-{second.size}" in part["Content-Disposition"]
    data = body(part)
    assert data.count(b"\n") == 1 + second.size - first.size  # header + only the new entries
    result = verify_export(io.BytesIO(data), key=vkey, since=state)
    assert (result.start, result.size) == (first.size, second.size)
    # the same range verifies on its own too, against the frontier in its header
    assert verify_export(io.BytesIO(data), key=vkey).root == bytes(second.root_hash)

    victim = first.size + 2
    AuditEntry.objects.filter(index=victim).update(action="card.forged")
    edited = body(client.get(f"/api/v1/audit/export?from={first.size}&to={second.size}"))
    with pytest.raises(VerificationError, match=f"^entry {victim} changed: root mismatch$"):
        verify_export(io.BytesIO(edited), key=vkey, since=state)

    assert client.get("/api/v1/audit/export?to=99999").status_code == 404
    assert client.get(f"/api/v1/audit/export?from={second.size + 1}").status_code == 400
    assert client.get("/api/v1/audit/export?from=x").status_code == 400


def test_entries_from_an_index_on(world: World) -> None:
    client = APIClient()
    client.force_authenticate(world.users["regulator"])
    services.sequence_pending()
    n = AuditEntry.objects.filter(index__isnull=False).count()
    page = client.get(f"/api/v1/audit/entries/?from_index={n - 3}&ordering=index").json()
    results = page["results"] if isinstance(page, dict) else page
    assert [e["index"] for e in results] == [n - 3, n - 2, n - 1]
    assert client.get("/api/v1/audit/entries/?from_index=-1").status_code == 400
