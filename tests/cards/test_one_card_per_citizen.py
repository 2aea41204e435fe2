"""Finding 6: one card per citizen was enforced only in CSV batches. The API issued a second card to
the same holder or assigned a holder who already had one, and an emulated card's state file was
named after its holder, so a second card overwrote the first card's secure memory. Now the
service refuses (409 problem), the database refuses (partial unique constraint on live cards)
and each emulated card's state file is named after its CIN."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards import services
from cards.models import Card
from ecard.errors import ServiceError
from tests.factories import World, build_world, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tmp_path, settings) -> World:
    settings.ECARD_CARDS_DIR = tmp_path
    return build_world()


def api(world: World, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[username])
    return client


def assert_problem(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert fragment in response.json()["detail"]


def test_a_second_card_for_the_same_holder_is_refused_via_the_api(world: World, tmp_path: Path) -> None:
    before = (Card.objects.count(), AuditEntry.objects.filter(action="card.issued").count())
    files = sorted(tmp_path.iterdir())
    response = api(world, "agency_op").post("/api/v1/cards/", {"holder": "citizen1", "emulated": True}, format="json")
    assert_problem(response, 409, "already holds a card")
    assert response.json()["errors"] == {"holder": [response.json()["detail"]]}
    assert (Card.objects.count(), AuditEntry.objects.filter(action="card.issued").count()) == before
    assert sorted(tmp_path.iterdir()) == files, "no state file was written"
    assert list(Card.objects.filter(holder=world.users["citizen1"])) == [world.cards["card1"]]


def test_assigning_a_holder_who_already_has_a_card_is_refused(world: World) -> None:
    spare = services.issue_card(agency=world.agency, emulated=False)
    response = api(world, "agency_op").patch(f"/api/v1/cards/{spare.pk}/", {"holder": "citizen2"}, format="json")
    assert_problem(response, 409, "already holds a card")
    spare.refresh_from_db()
    assert spare.holder is None
    assert not AuditEntry.objects.filter(action="card.holder_assigned", card_cin=spare.cin).exists()
    # a citizen without a card may be assigned; assigning again is idempotent
    newcomer = make_user("citizen7")
    ok = api(world, "agency_op").patch(f"/api/v1/cards/{spare.pk}/", {"holder": "citizen7"}, format="json")
    assert ok.status_code == 200 and ok.json()["holder"] == "citizen7"
    assert services.assign_holder(card=spare, holder=newcomer, actor=world.users["agency_op"]).holder == newcomer


def test_the_portal_issue_form_refuses_a_second_card(world: World) -> None:
    client = Client(raise_request_exception=True)
    client.force_login(world.users["agency_op"])
    before = Card.objects.count()
    page = client.post("/agency/cards/issue/", {"holder": "citizen3", "scp": "3"})
    assert page.status_code == 400
    assert "already holds a card" in page.content.decode()
    assert Card.objects.count() == before


def test_the_database_refuses_a_second_live_card_for_a_holder(world: World) -> None:
    citizen = world.users["citizen1"]
    with pytest.raises(IntegrityError), transaction.atomic():
        Card.objects.create(
            cin="0102030405060708", serial="DUP1", kdd="00" * 10, holder=citizen, issued_by=world.agency
        )
    spare = Card.objects.create(cin="1102030405060708", serial="DUP2", kdd="00" * 10, issued_by=world.agency)
    with pytest.raises(IntegrityError), transaction.atomic():
        Card.objects.filter(pk=spare.pk).update(holder=citizen)
    # A TERMINATED card no longer counts: the citizen may get a replacement.
    Card.objects.filter(pk=world.cards["card1"].pk).update(lifecycle=Card.Lifecycle.TERMINATED)
    Card.objects.filter(pk=spare.pk).update(holder=citizen)


def test_a_terminated_card_can_be_replaced_and_the_files_stay_apart(world: World, tmp_path: Path) -> None:
    citizen = make_user("citizen8")
    first = services.issue_card(agency=world.agency, holder=citizen, emulated=True)
    first_bytes = Path(first.state_file).read_bytes()
    with pytest.raises(ServiceError) as refused:
        services.issue_card(agency=world.agency, holder=citizen, emulated=True)
    assert refused.value.code == "duplicate" and refused.value.field == "holder"
    Card.objects.filter(pk=first.pk).update(lifecycle=Card.Lifecycle.TERMINATED)
    second = services.issue_card(agency=world.agency, holder=citizen, emulated=True)
    assert Path(first.state_file) == tmp_path / f"{first.cin}.json"
    assert Path(second.state_file) == tmp_path / f"{second.cin}.json"
    assert first.state_file != second.state_file
    assert Path(first.state_file).read_bytes() == first_bytes, "the first card's secure memory is untouched"
    with pytest.raises(ServiceError):
        services.assign_holder(card=first, holder=make_user("citizen10"), actor=world.users["agency_op"])


def test_two_cards_two_state_files_and_card_file_names_them(world: World, tmp_path: Path) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    card_a = services.issue_card(agency=world.agency, holder=alice, emulated=True)
    card_b = services.issue_card(agency=world.agency, emulated=True)
    services.assign_holder(card=card_b, holder=bob, actor=world.users["agency_op"])
    card_b.refresh_from_db()
    assert {Path(card_a.state_file).name, Path(card_b.state_file).name} == {f"{card_a.cin}.json", f"{card_b.cin}.json"}
    out = io.StringIO()
    call_command("card_file", "bob", stdout=out)
    assert out.getvalue().strip() == card_b.state_file
    for username in ("nobody", "citizen1"):  # no such user; a card that is not emulated
        with pytest.raises(CommandError):
            call_command("card_file", username, stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_oldest_live_card_of_a_holder(migrator: Any) -> None:
    before, after = [("cards", "0003_card_packages")], [("cards", "0004_one_live_card_per_holder")]
    executor = migrator
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    agency = apps.get_model("issuers", "Organization").objects.create(name="Agency", slug="agency", kind="agency")
    holder = apps.get_model("auth", "User").objects.create(username="twice")
    old_card = apps.get_model("cards", "Card")
    for cin in ("0000000000000001", "0000000000000002"):
        old_card.objects.create(cin=cin, serial=cin, kdd="00" * 10, holder=holder, issued_by=agency)
    executor.loader.build_graph()
    executor.migrate(after)
    assert dict(Card.objects.values_list("cin", "holder_id")) == {
        "0000000000000001": holder.pk,
        "0000000000000002": None,
    }
