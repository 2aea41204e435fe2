"""Finding 3: a bank named without Latin letters got the empty slug, and audit visibility matched
entries by slug, so its members read every entry that concerns no organisation (other citizens'
credentials and sessions) and the portal's navigation answered 500. Slugs are never empty now
(transliterated or generated, unique; a database constraint), and the audit selector never
matches the empty value."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards import services as card_services
from ecard.errors import ServiceError
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from tests.factories import World, make_user
from updates.services import issue_agent_credential


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def events_of_no_organisation(world: World) -> None:
    """Entries with organisation "": another citizen's agent credential, a holder assignment."""
    issue_agent_credential(user=world.users["citizen1"], name="kitchen reader")
    newcomer = make_user("citizen9")
    card = card_services.issue_card(agency=world.agency, emulated=False)
    card_services.assign_holder(card=card, holder=newcomer, actor=world.users["agency_op"])
    assert AuditEntry.objects.filter(organization_slug="", action="agent_credential.issued").exists()


@pytest.mark.django_db
def test_a_bank_named_in_cyrillic_sees_only_its_own_entries_api_and_portal(world: World) -> None:
    admitted = api(world.users["agency_op"]).post(
        "/api/v1/organizations/", {"name": "Банк Москва", "rid": "A000000777"}, format="json"
    )
    assert admitted.status_code == 201, admitted.content
    slug = admitted.json()["slug"]
    assert slug == "bank-moskva"
    bank = Organization.objects.get(slug=slug)
    member = make_user("moskva_admin")
    issuer_services.add_member(organization=bank, user=member, role=Membership.Role.ADMIN)
    events_of_no_organisation(world)

    entries = api(member).get("/api/v1/audit/entries/", {"limit": 500}).json()
    own = AuditEntry.objects.filter(organization_slug=slug, index__isnull=False).count()
    assert entries["count"] == own > 0
    assert {e["organisation"] for e in entries["results"]} == {slug}
    assert not [e for e in entries["results"] if e["action"].startswith(("agent_credential.", "card.holder"))]
    foreign = AuditEntry.objects.get(action="agent_credential.issued")
    assert api(member).get(f"/api/v1/audit/entries/{foreign.index}/").status_code == 404

    portal = Client(raise_request_exception=True)
    portal.force_login(member)
    page = portal.get("/audit/")
    assert page.status_code == 200
    assert page.content.decode().count('aria-label="Entry ') == own
    assert portal.get(f"/audit/entries/{foreign.index}/").status_code == 404
    assert portal.get(f"/bank/{slug}/").status_code == 200


@pytest.mark.django_db
def test_slugs_are_never_empty_and_stay_unique(world: World) -> None:
    emoji = issuer_services.admit_bank(name="🏦💰", rid="A000000666")
    assert emoji.slug.startswith("bank-") and len(emoji.slug) > len("bank-")
    first = issuer_services.admit_bank(name="Банк Москва", rid="A000000555")
    second = issuer_services.admit_bank(name="Bank Moskva", rid="A000000444")
    assert (first.slug, second.slug) == ("bank-moskva", "bank-moskva-2")
    greek = issuer_services.create_organization(name="Εποπτική Αρχή", kind="regulator")
    assert greek.slug == "epoptiki-archi"
    for bad in ("", "   "):
        with pytest.raises(ServiceError):
            issuer_services.create_organization(name=bad, kind="bank")
    with pytest.raises(ServiceError):
        issuer_services.create_organization(name="Gamma", kind="bank", slug="гамма")
    with pytest.raises(IntegrityError), transaction.atomic():
        Organization.objects.create(name="Direct", slug="", kind="bank")


@pytest.mark.django_db
def test_the_portal_admission_form_gives_a_slug_too(world: World) -> None:
    client = Client(raise_request_exception=True)
    client.force_login(world.users["agency_admin"])
    posted = client.post(
        "/agency/banks/",
        {"name": "💳🏦", "rid": "A000000333", "management": "dm", "scp": "3", "key_length": "16"},
    )
    assert posted.status_code == 302, posted.content.decode()[:500]
    bank = Organization.objects.get(name="💳🏦")
    assert bank.slug.startswith("bank-")
    assert client.get("/agency/banks/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_empty_slugs_a_generated_one(migrator: MigrationExecutor) -> None:
    executor = migrator
    before, after = [("issuers", "0002_key_custody")], [("issuers", "0003_organization_slug_not_empty")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("issuers", "Organization")
    old.objects.create(name="Банк Москва", slug="", kind="bank")
    old.objects.create(name="🏦", slug="bank-x", kind="bank")
    executor.loader.build_graph()
    executor.migrate(after)
    slugs = list(Organization.objects.values_list("slug", flat=True))
    assert "" not in slugs and len(set(slugs)) == 2
    assert Organization.objects.get(name="Банк Москва").slug.startswith("bank-")
