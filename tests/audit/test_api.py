"""The audit API: proofs against an independent RFC 9162 implementation, visibility per role,
checkpoints (read; sign on demand by agency operators only), filters, pagination, export."""

from __future__ import annotations

import base64
import hashlib
import io
from functools import lru_cache

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from audit import apis, services
from audit.checkpoint import parse_checkpoint
from audit.export_format import canonical_leaf_bytes
from audit.merkle import verify_consistency, verify_inclusion
from audit.models import AuditEntry, Checkpoint
from audit.verify import verify_export
from cards import services as card_services
from tests.factories import World, build_world

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- RFC 9162 §2.1, written out plainly


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """Largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Rfc9162:
    """MTH, PATH and PROOF/SUBPROOF exactly as RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 define them."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.mth = lru_cache(maxsize=None)(self._mth)

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return _sha(b"")
        if n == 1:
            return _sha(b"\x00" + self.leaves[lo])
        k = _k(n)
        return _sha(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _k(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self.subproof(m, 0, n, True)

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = _k(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


def test_reference_matches_rfc6962_vectors() -> None:
    """The plain transcription above reproduces the RFC 6962 reference tree (root of 8 leaves)."""
    leaves = [
        bytes.fromhex(h)
        for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
    ]
    ref = Rfc9162(leaves)
    assert ref.mth(0, 8).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert ref.mth(0, 3).hex() == "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def fresh_throttles() -> None:
    """API rate-limit counters live in the cache; each test starts with none."""
    cache.clear()


@pytest.fixture
def world() -> World:
    w = build_world()
    # a few more real events so the log is ~40 entries with an irregular size
    for _ in range(2):
        card_services.issue_card(agency=w.agency, holder=None)
    return w


def client_for(world: World, username: str | None) -> APIClient:
    client = APIClient()
    if username is not None:
        client.force_authenticate(world.users[username])
    return client


def b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def all_entries(client: APIClient, **params: str) -> list[dict]:
    out: list[dict] = []
    url = "/api/v1/audit/entries/"
    query: dict[str, str] | None = {"limit": "17", **params}
    while url:
        response = client.get(url, query)
        assert response.status_code == 200, response.content
        out += response.json()["results"]
        url, query = response.json()["next"], None
    return out


# --------------------------------------------------------------------------- proofs


def test_inclusion_and_consistency_proofs_match_rfc9162(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # ~1,700 requests in a few seconds: more than the per-user rate limit allows, and not what is under test
    for view in (apis.EntryViewSet, apis.EntryProofViewSet, apis.ConsistencyView, apis.LogView):
        monkeypatch.setattr(view, "throttle_classes", ())
    client = client_for(world, "regulator")
    n = AuditEntry.objects.count()
    assert 38 <= n <= 60
    assert AuditEntry.objects.filter(index__isnull=True).count() == n  # nothing committed yet: all pending
    head = client.get("/api/v1/audit/log").json()  # reads sequence the pending entries first
    leaves = [canonical_leaf_bytes(row.as_entry()) for row in AuditEntry.objects.order_by("index")]
    ref = Rfc9162(leaves)
    assert head["size"] == n and b64d(head["root_hash"]) == ref.mth(0, n)

    for size in range(1, n + 1):
        for index in range(size):
            body = client.get(f"/api/v1/audit/entries/{index}/proof", {"tree_size": size}).json()
            proof = [b64d(h) for h in body["proof"]]
            assert proof == ref.path(index, 0, size), (index, size)
            assert b64d(body["root_hash"]) == ref.mth(0, size)
            leaf_hash = bytes.fromhex(body["leaf_hash"])
            assert leaf_hash == _sha(b"\x00" + leaves[index])
            assert verify_inclusion(leaf_hash, index, size, proof, ref.mth(0, size))

    for second in range(1, n + 1):
        for first in range(second + 1):
            body = client.get("/api/v1/audit/consistency", {"first": first, "second": second}).json()
            proof = [b64d(h) for h in body["proof"]]
            expected = [] if first in (0, second) else ref.proof(first, second)
            assert proof == expected, (first, second)
            roots = b64d(body["first_root"]), b64d(body["second_root"])
            assert roots == (ref.mth(0, first), ref.mth(0, second))
            assert verify_consistency(first, second, *roots, proof)


def test_proof_parameters_are_checked(world: World) -> None:
    client = client_for(world, "regulator")
    n = AuditEntry.objects.count()
    default = client.get("/api/v1/audit/entries/3/proof").json()
    assert default["tree_size"] == n
    for params in ({"tree_size": "3"}, {"tree_size": str(n + 1)}, {"tree_size": "x"}, {"tree_size": "-1"}):
        response = client.get("/api/v1/audit/entries/3/proof", params)
        assert response.status_code == 400
        assert response["Content-Type"].startswith("application/problem+json")
    for params in ({"first": "5", "second": "4"}, {"first": "1"}, {"first": "1", "second": str(n + 1)}):
        response = client.get("/api/v1/audit/consistency", params)
        assert response.status_code == 400
        assert response.json()["status"] == 400
    assert client.get(f"/api/v1/audit/entries/{n + 5}/proof").status_code == 404


# --------------------------------------------------------------------------- visibility


def test_agency_and_regulator_read_everything(world: World) -> None:
    n = AuditEntry.objects.count()
    for username in ("regulator", "agency_op", "agency_admin"):
        entries = all_entries(client_for(world, username))
        assert [e["index"] for e in entries] == list(range(n))


def test_bank_reads_only_its_own_entries(world: World) -> None:
    client = client_for(world, "alpha_op")
    entries = all_entries(client)
    assert entries and {e["organisation"] for e in entries} == {"alpha"}
    assert len(entries) == AuditEntry.objects.filter(organization_slug="alpha").count()
    other = AuditEntry.objects.exclude(organization_slug="alpha").first()
    assert client.get(f"/api/v1/audit/entries/{other.index}/").status_code == 404
    assert client.get(f"/api/v1/audit/entries/{other.index}/proof").status_code == 404
    assert all_entries(client, organization="beta") == []
    assert client.get("/api/v1/audit/export").status_code == 403


def test_citizen_reads_only_their_cards_entries(world: World) -> None:
    client = client_for(world, "citizen1")
    cin = world.cards["card1"].cin
    entries = all_entries(client)
    assert entries and {e["card"] for e in entries} == {cin}
    assert len(entries) == AuditEntry.objects.filter(card_cin=cin).count()
    other = AuditEntry.objects.filter(card_cin=world.cards["card2"].cin).first()
    assert client.get(f"/api/v1/audit/entries/{other.index}/").status_code == 404
    own = entries[0]["index"]
    body = client.get(f"/api/v1/audit/entries/{own}/proof").json()
    assert body["index"] == own
    assert all_entries(client_for(world, "outsider")) == []
    assert client.get("/api/v1/audit/export").status_code == 403


def test_anonymous_is_refused_everywhere(world: World) -> None:
    client = client_for(world, None)
    for path in (
        "/api/v1/audit/entries/",
        "/api/v1/audit/entries/0/",
        "/api/v1/audit/entries/0/proof",
        "/api/v1/audit/consistency?first=1&second=2",
        "/api/v1/audit/checkpoints/",
        "/api/v1/audit/checkpoints/latest/",
        "/api/v1/audit/export",
        "/api/v1/audit/log",
    ):
        response = client.get(path)
        assert response.status_code in (401, 403), path
        assert response["Content-Type"].startswith("application/problem+json")
    assert client.post("/api/v1/audit/checkpoints/").status_code in (401, 403)
    assert Checkpoint.objects.count() == 0


def test_nobody_writes_entries_through_the_api(world: World) -> None:
    entry = AuditEntry.objects.first()
    for username in ("agency_admin", "regulator", "alpha_admin", "citizen1"):
        client = client_for(world, username)
        assert client.post("/api/v1/audit/entries/", {"action": "x"}).status_code in (403, 405)
        for method in (client.put, client.patch, client.delete):
            assert method(f"/api/v1/audit/entries/{entry.index}/", {"action": "x"}).status_code in (403, 404, 405)
        for method in (client.put, client.patch, client.delete):
            assert method("/api/v1/audit/checkpoints/1/", {}).status_code in (403, 404, 405)
    entry.refresh_from_db()
    assert entry.action != "x"


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_signed_on_demand_by_agency_operators_only(world: World) -> None:
    for username in ("regulator", "alpha_admin", "citizen1", "outsider"):
        assert client_for(world, username).post("/api/v1/audit/checkpoints/").status_code == 403
    assert Checkpoint.objects.count() == 0
    assert client_for(world, "regulator").get("/api/v1/audit/checkpoints/latest/").status_code == 404

    agency = client_for(world, "agency_op")
    response = agency.post("/api/v1/audit/checkpoints/")
    assert response.status_code == 201
    first = response.json()
    again = agency.post("/api/v1/audit/checkpoints/")
    assert again.status_code == 200 and again.json()["size"] == first["size"]

    regulator = client_for(world, "regulator")
    vkey = regulator.get("/api/v1/audit/log").json()["verifier_key"]
    assert vkey == services.log_verifier_key()
    latest = regulator.get("/api/v1/audit/checkpoints/latest/").json()
    parsed = parse_checkpoint(latest["text"], vkey)
    assert parsed.size == first["size"] == AuditEntry.objects.count()
    assert base64.b64encode(parsed.root).decode() == latest["root_hash"]
    assert regulator.get(f"/api/v1/audit/checkpoints/{parsed.size}/").json()["text"] == latest["text"]
    listing = client_for(world, "citizen1").get("/api/v1/audit/checkpoints/").json()
    assert listing["count"] == 1
    proof = regulator.get("/api/v1/audit/entries/0/proof", {"tree_size": parsed.size}).json()
    assert proof["checkpoint"] == latest["text"]
    verify_inclusion(bytes.fromhex(proof["leaf_hash"]), 0, parsed.size, [b64d(h) for h in proof["proof"]], parsed.root)


# --------------------------------------------------------------------------- filters, pagination, schema


def test_filters_and_pagination(world: World) -> None:
    client = client_for(world, "regulator")
    cin = world.cards["card3"].cin
    by_card = all_entries(client, card=cin)
    assert by_card and len(by_card) == AuditEntry.objects.filter(card_cin=cin).count()
    by_org = all_entries(client, organization="beta", action="enrollment.requested")
    assert len(by_org) == AuditEntry.objects.filter(organization_slug="beta", action="enrollment.requested").count()
    assert all(e["organisation"] == "beta" and e["action"] == "enrollment.requested" for e in by_org)
    assert all_entries(client, outcome="failure") == []
    middle = AuditEntry.objects.order_by("index")[10].time
    later = all_entries(client, since=middle.isoformat())
    earlier = all_entries(client, until=middle.isoformat())
    assert len(later) + len(earlier) == AuditEntry.objects.count()
    assert all(e["index"] >= 10 for e in later)
    page = client.get("/api/v1/audit/entries/", {"limit": 5, "offset": 5}).json()
    assert page["count"] == AuditEntry.objects.count() and [e["index"] for e in page["results"]] == [5, 6, 7, 8, 9]
    bad = client.get("/api/v1/audit/entries/", {"outcome": "maybe"})
    assert bad.status_code == 400 and bad["Content-Type"].startswith("application/problem+json")


def test_openapi_documents_the_audit_routes(world: World) -> None:
    schema = client_for(world, "regulator").get("/api/schema/", {"format": "json"}).json()
    for path in (
        "/api/v1/audit/entries/",
        "/api/v1/audit/entries/{index}/",
        "/api/v1/audit/entries/{index}/proof",
        "/api/v1/audit/consistency",
        "/api/v1/audit/checkpoints/",
        "/api/v1/audit/checkpoints/latest/",
        "/api/v1/audit/export",
        "/api/v1/audit/log",
    ):
        assert path in schema["paths"], path
    params = {p["name"] for p in schema["paths"]["/api/v1/audit/entries/"]["get"]["parameters"]}
    assert {"card", "organization", "action", "outcome", "since", "until", "limit", "offset"} <= params


# --------------------------------------------------------------------------- export download


def test_export_download_verifies(world: World) -> None:
    client = client_for(world, "regulator")
    assert client.get("/api/v1/audit/export").status_code == 404  # nothing signed yet
    services.make_checkpoint()
    card_services.issue_card(agency=world.agency, holder=None)
    latest = services.make_checkpoint()
    response = client.get("/api/v1/audit/export")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/jsonl")
    assert f"audit-log-{latest.size}.jsonl" in response["Content-Disposition"]
    data = b"".join(response.streaming_content)
    result = verify_export(io.BytesIO(data), key=services.log_verifier_key())
    assert result.size == latest.size == AuditEntry.objects.count()
    older = client.get("/api/v1/audit/export", {"size": Checkpoint.objects.order_by("size").first().size})
    older_result = verify_export(io.BytesIO(b"".join(older.streaming_content)), key=services.log_verifier_key())
    assert older_result.size < latest.size
