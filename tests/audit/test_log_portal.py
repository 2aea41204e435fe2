"""Portal pages of the audit log: browse and filter, entry with its checked inclusion proof,
checkpoint history and verification of a pasted checkpoint, export download; same visibility."""

from __future__ import annotations

import io

import pytest
from django.test import Client

from audit import services
from audit.checkpoint import make_checkpoint
from audit.models import AuditEntry
from audit.verify import verify_export
from cards import services as card_services
from issuers import custody, log_signing
from tests.factories import World

pytestmark = pytest.mark.django_db


def login(world: World, username: str) -> Client:
    client = Client()
    client.force_login(world.users[username])
    return client


def test_login_required(world: World) -> None:
    client = Client()
    for path in ("/audit/", "/audit/entries/0/", "/audit/checkpoints/", "/audit/export/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_log_browser_filters_and_labels(world: World) -> None:
    client = login(world, "regulator")
    page = client.get("/audit/").content.decode()
    assert '<label for="id_card">Card (CIN)</label>' in page
    assert '<label for="id_action">Action</label>' in page
    assert page.count('aria-label="Entry ') == min(50, AuditEntry.objects.count())
    cin = world.cards["card2"].cin
    filtered = client.get("/audit/", {"card": cin}).content.decode()
    assert filtered.count('aria-label="Entry ') == AuditEntry.objects.filter(card_cin=cin).count()
    assert f"/audit/entries/{AuditEntry.objects.filter(card_cin=cin).first().index}/" in filtered
    assert 'href="/audit/export/"' in page


def test_bank_sees_only_its_entries_in_the_portal(world: World) -> None:
    client = login(world, "beta_op")
    page = client.get("/audit/").content.decode()
    assert page.count('aria-label="Entry ') == AuditEntry.objects.filter(organization_slug="beta").count()
    assert 'href="/audit/export/"' not in page
    alpha_entry = AuditEntry.objects.filter(organization_slug="alpha").first()
    assert client.get(f"/audit/entries/{alpha_entry.index}/").status_code == 404
    assert client.get("/audit/export/").status_code == 403


def test_entry_page_shows_a_verified_inclusion_proof(world: World) -> None:
    checkpoint = services.make_checkpoint()
    card_services.issue_card(agency=world.agency, holder=None)  # entries after the checkpoint
    client = login(world, "citizen1")
    own = AuditEntry.objects.filter(card_cin=world.cards["card1"].cin).first()
    page = client.get(f"/audit/entries/{own.index}/").content.decode()
    assert "<strong>Verified:</strong>" in page
    assert f"tree of\n  {checkpoint.size} entries" in page and "signed checkpoint" in page
    newest = AuditEntry.objects.order_by("-index").first()
    page = login(world, "regulator").get(f"/audit/entries/{newest.index}/").content.decode()
    assert "<strong>Verified:</strong>" in page and "current head, not yet signed" in page
    # a row edited in the database no longer proves into the tree
    AuditEntry.objects.filter(index=own.index).update(reason="edited")
    page = client.get(f"/audit/entries/{own.index}/").content.decode()
    assert "<strong>Not verified:</strong>" in page


def test_checkpoint_page_verifies_a_pasted_checkpoint(world: World) -> None:
    kept = services.make_checkpoint()
    card_services.issue_card(agency=world.agency, holder=None)
    services.make_checkpoint()
    client = login(world, "regulator")
    page = client.get("/audit/checkpoints/").content.decode()
    assert services.log_verifier_key() in page and page.count("<pre>ecard.example/audit-log\n") == 2
    assert '<label for="id_checkpoint">' in page

    good = client.post("/audit/checkpoints/", {"checkpoint": kept.text.replace("\n", "\r\n")}).content.decode()
    assert "Valid and consistent" in good and f"size {kept.size}," in good

    tampered = kept.text.replace(kept.text.splitlines()[1], str(kept.size + 1), 1)
    bad = client.post("/audit/checkpoints/", {"checkpoint": tampered}).content.decode()
    assert "Check failed" in bad and "Signature invalid" in bad

    key = custody.load_private_key(log_signing.signing_keyset())
    split_view = make_checkpoint("ecard.example/audit-log", kept.size, b"\x22" * 32, key)
    bad = client.post("/audit/checkpoints/", {"checkpoint": split_view}).content.decode()
    assert "Check failed" in bad and "NOT consistent" in bad

    future = make_checkpoint("ecard.example/audit-log", kept.size + 100, b"\x22" * 32, key)
    bad = client.post("/audit/checkpoints/", {"checkpoint": future}).content.decode()
    assert "NOT consistent" in bad

    garbage = client.post("/audit/checkpoints/", {"checkpoint": "hello"}).content.decode()
    assert "Malformed checkpoint" in garbage


def test_export_download_from_the_portal(world: World) -> None:
    assert login(world, "regulator").get("/audit/export/").status_code == 404  # nothing signed yet
    services.make_checkpoint()
    response = login(world, "agency_admin").get("/audit/export/")
    assert response.status_code == 200
    result = verify_export(io.BytesIO(b"".join(response.streaming_content)), key=services.log_verifier_key())
    assert result.size == AuditEntry.objects.count()
