"""Issue 19's acceptance flow for lost and stolen cards, in a real browser on the demo.

citizen1 (Alpha and Beta on the card, each applet personalised) reports the card lost in the
portal: a presentation of it is refused, and the card itself is CARD_LOCKED (read back from the
emulated card). The agency issues a replacement in the portal; each bank acts on the notice that
asks for its personalisation data again (Beta in its portal: notices page, CSV upload; Alpha
through the API). citizen1 presents the new card once: both banks, their applets and their data
are on it. The old card is terminated at its next presentation and refused after. The agency also
blocks and unblocks citizen2's card with a reason. Every step is in the transparency log; the
holders' e-mails are captured. Pages screenshotted and axe-checked; no 5xx."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from playwright.sync_api import expect
from rest_framework.test import APIClient

from agent.core import run_session
from agent.http import HttpServer, RelayError
from audit.models import AuditEntry
from cards.models import BankNotice, Card, CardJob
from cardsim.transport import InProcessCard
from demo.management.commands.seed_demo import DEMO_PASSWORD, instance_aid
from gp.commands import CardLifeCycle
from issuers.models import Organization
from tests.portal.test_browser import (  # noqa: F401 - the demo fixtures
    BETA_RID,
    demo,
    demo_services,
    enroll_and_present,
    present,
)
from updates import services as update_services

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ALPHA_RID = "F0414C5048"
ALPHA_INSTANCE, BETA_INSTANCE = instance_aid(ALPHA_RID), instance_aid(BETA_RID)


def refused_presentation(card: Card, base_url: str) -> str:
    """The holder presents the card and the server ends the session refused: the reason it gives."""
    _credential, token = update_services.issue_agent_credential(user=card.holder, name="test reader")
    transport = InProcessCard(card.state_file)
    transport.reset()
    try:
        result = run_session(transport, HttpServer(base_url, token))
    except RelayError as exc:
        return str(exc)
    assert not result.ok, result
    return result.error


def personalise(bank_slug: str, card: Card, instance: str, data: bytes) -> None:
    """The bank gives an instance's data through the personalisation API (sealed at once)."""
    client = APIClient()
    client.force_authenticate(Organization.objects.get(slug=bank_slug).memberships.get().user)
    answer = client.post(
        "/api/v1/personalization/",
        {"bank": bank_slug, "items": [{"card_number": card.serial, "instance_aid": instance, "data_hex": data.hex()}]},
        format="json",
    )
    assert answer.status_code == 201, answer.content


def test_a_lost_card_is_blocked_replaced_with_its_banks_and_data_and_ends_terminated(
    demo: None,  # noqa: F811
    visit: Any,
    live_server: Any,
) -> None:
    base = live_server.url
    old = enroll_and_present("citizen1", "beta", base)  # Alpha was requested by the demo: both go on now
    old.holder.email = "citizen1@example.org"
    old.holder.save(update_fields=["email"])
    old_data = {ALPHA_INSTANCE: b"alpha: citizen1's account 0001", BETA_INSTANCE: b"beta: citizen1's account 0002"}
    personalise("alpha", old, ALPHA_INSTANCE, old_data[ALPHA_INSTANCE])
    personalise("beta", old, BETA_INSTANCE, old_data[BETA_INSTANCE])
    present(old, base)
    assert InProcessCard(old.state_file).personalization(BETA_INSTANCE) == old_data[BETA_INSTANCE]

    # 1. citizen1 reports the card lost in the portal.
    citizen = visit()
    citizen.login("citizen1", DEMO_PASSWORD)
    citizen.goto(f"/card/{old.cin}/")
    citizen.page.get_by_role("link", name="Report lost or stolen").click()
    citizen.page.get_by_label("I lost my card").check()
    citizen.page.get_by_label("Anything to add (optional)").fill("on the bus, Tuesday")
    citizen.check("citizen-report-loss")
    citizen.page.get_by_label("Block my card now", exact=False).check()
    citizen.page.get_by_role("button", name="Block my card").click()
    expect(citizen.page.locator("#standing")).to_contain_text("blocked")
    citizen.check("citizen-card-blocked")
    old.refresh_from_db()
    assert old.standing == Card.Standing.BLOCKED

    # A presentation of it is refused, and the card locks itself (read back from the card).
    assert "this card is blocked" in refused_presentation(old, base)
    assert InProcessCard(old.state_file).card.state["lifecycle"] == CardLifeCycle.CARD_LOCKED
    old.refresh_from_db()
    assert old.lifecycle == Card.Lifecycle.CARD_LOCKED

    # 2. The agency issues a replacement card in the portal.
    agency = visit()
    agency.login("agency", DEMO_PASSWORD)
    agency.goto(f"/agency/cards/{old.cin}/")
    expect(agency.page.locator("#standing")).to_contain_text("Blocked")
    agency.page.get_by_role("link", name="Issue a replacement card").click()
    agency.page.get_by_label("Reason (optional)").fill("reported lost by the holder")
    agency.check("agency-replace-card")
    agency.page.get_by_label("Issue a new card to the holder and end this one").check()
    agency.page.get_by_role("button", name="Issue a replacement card").click()
    expect(agency.page.get_by_text("is issued to replace card")).to_be_visible()
    new = Card.objects.get(holder__username="citizen1", standing=Card.Standing.ACTIVE)
    assert new != old and Card.objects.get(pk=old.pk).replaced_by == new
    expect(agency.page.locator("#replacement")).to_contain_text("Beta Bank")
    agency.check("agency-replacement-card")

    # 3. The banks act on the notices that ask for their data again: Beta in its portal ...
    beta = visit()
    beta.login("beta", DEMO_PASSWORD)
    beta.goto("/bank/beta/")
    beta.page.get_by_role("link", name="Card notices and webhook").click()
    expect(beta.page.locator("#notices")).to_contain_text("Personalisation data requested again")
    expect(beta.page.locator("#notices")).to_contain_text(new.serial)
    beta.check("bank-card-notices")
    notice = BankNotice.objects.get(organization__slug="beta", kind=BankNotice.Kind.PERSONALIZATION_REQUESTED)
    assert notice.details["instances"] == [BETA_INSTANCE] and notice.details["card_number"] == new.serial
    new_data = {ALPHA_INSTANCE: b"alpha: account 0001, new card", BETA_INSTANCE: b"beta: account 0002, new card"}
    csv_path = f"{new.state_file}.perso.csv"
    with open(csv_path, "w") as handle:
        handle.write(
            f"card_number,instance_aid,data_hex\n{new.serial},{BETA_INSTANCE},{new_data[BETA_INSTANCE].hex()}\n"
        )
    beta.goto("/bank/beta/personalization/")
    beta.page.get_by_label("CSV file").set_input_files(csv_path)
    beta.page.get_by_role("button", name="Seal and queue").click()
    expect(beta.page.get_by_text("is sealed to your key service")).to_be_visible()
    # ... and Alpha through the API, reading its notice there first.
    alpha_api = APIClient()
    alpha_api.force_authenticate(Organization.objects.get(slug="alpha").memberships.get().user)
    listed = alpha_api.get("/api/v1/notices/", {"bank": "alpha"}).json()["results"]
    asked = next(n for n in listed if n["kind"] == "perso_requested")
    assert asked["details"]["instances"] == [ALPHA_INSTANCE]
    personalise("alpha", new, ALPHA_INSTANCE, new_data[ALPHA_INSTANCE])

    # The citizen sees one list: the old card's banks, their progress on the new card.
    citizen.goto("/card/")
    expect(citizen.page.locator("#replacement")).to_contain_text("Alpha Bank")
    expect(citizen.page.locator("#replacement")).to_contain_text("waiting for your card")
    citizen.check("citizen-replacement-progress")

    # 4. citizen1 presents the new card once: both banks, their applets and their data are on it.
    present(new, base)
    transport = InProcessCard(new.state_file)
    for instance, data in new_data.items():
        assert instance in transport.card.state["apps"]
        assert transport.personalization(instance) == data
    assert not CardJob.objects.filter(card=new).exclude(state=CardJob.State.DONE).exists()
    citizen.goto(f"/card/{new.cin}/")
    expect(citizen.page.locator("#replacement")).to_contain_text("delivered")
    citizen.check("citizen-replacement-done")

    # 5. The old card: TERMINATED at its next presentation, refused from then on.
    assert "this card is terminated" in refused_presentation(old, base)
    assert InProcessCard(old.state_file).card.state["lifecycle"] == CardLifeCycle.TERMINATED
    assert "this card is terminated" in refused_presentation(old, base)

    # 6. The agency blocks and unblocks citizen2's card, with reasons.
    other = Card.objects.get(holder__username="citizen2")
    agency.goto(f"/agency/cards/{other.cin}/")
    agency.page.get_by_role("link", name="Block card").click()
    agency.page.get_by_role("button", name="Block card").click()  # no reason: refused, said next to the field
    expect(agency.page.get_by_text("Give the reason")).to_be_visible()
    agency.page.get_by_label("Reason").fill("holder called: card stolen")
    agency.page.get_by_role("button", name="Block card").click()
    expect(agency.page.locator("#standing")).to_contain_text("Blocked")
    agency.page.get_by_role("link", name="Unblock card").click()
    agency.page.get_by_label("Reason").fill("holder found the card at home")
    agency.check("agency-unblock-card")
    agency.page.get_by_role("button", name="Unblock card").click()
    expect(agency.page.locator("#standing")).to_contain_text("In use")

    # Every step is in the transparency log, and the holders were e-mailed.
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"card.blocked", "card.locked", "card.replaced", "card.terminated", "card.unblocked"} <= actions
    assert AuditEntry.objects.get(action="card.unblocked").reason == "holder found the card at home"
    subjects = [m.subject for m in mail.outbox if m.to == ["citizen1@example.org"]]
    assert f"Your card {old.cin} is blocked" in subjects and f"Your replacement card {new.cin}" in subjects
    for v in (citizen, agency, beta):
        assert not v.server_errors(), v.server_errors()
