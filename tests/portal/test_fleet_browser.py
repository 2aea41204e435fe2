"""The bank's console (issue 18) in a real browser on the demo data: the dashboard's pictures, the
template page, an install campaign refused for a bad CSV line, a card page and closing an account,
and the citizen's card page with the bank's message — each screenshotted at desktop and phone
widths and checked with axe-core (no serious or critical violation); no 5xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from cards.models import Card, Enrollment
from demo.management.commands.seed_demo import DEMO_PASSWORD
from tests.factories import activate
from tests.portal.test_browser import demo, demo_services  # noqa: F401 - the demo fixtures
from updates.rollout_models import CardNotice, Rollout

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_bank_console_pages_in_a_browser(demo: None, visit: Any, tmp_path: Path) -> None:  # noqa: F811
    enrollment = Enrollment.objects.get(bank__slug="alpha", card__holder__username="citizen1")
    activate(enrollment)
    cin = Card.objects.get(holder__username="citizen1").cin
    v = visit()
    v.login("alpha", DEMO_PASSWORD)

    v.goto("/bank/alpha/")
    expect(v.page.get_by_role("heading", name="Installed versions over time")).to_be_visible()
    expect(v.page.get_by_role("heading", name="Campaigns by wave")).to_be_visible()
    v.check("portal-bank-console-dashboard")

    v.goto("/bank/alpha/template/")
    expect(v.page.get_by_role("heading", name="Security domain template and default applets")).to_be_visible()
    v.check("portal-bank-template")

    csv_file = tmp_path / "cards.csv"
    csv_file.write_text(f"card_number\n{cin}\nnot-a-card\n")
    v.goto("/bank/alpha/rollouts/install/")
    v.page.get_by_label("Instance AIDs").fill("F0414C504801010202")
    v.page.get_by_label("The cards in a CSV file").check()
    v.page.locator("#id_csv_file").set_input_files(str(csv_file))
    v.page.get_by_role("button", name="Plan the campaign").click()
    expect(v.page.get_by_text("line 3: 'not-a-card' is not a card number")).to_be_visible()
    assert not Rollout.objects.exists()
    v.check("portal-bank-install-refused")

    v.goto(f"/bank/alpha/cards/{cin}/")
    v.check("portal-bank-card")
    v.page.get_by_role("link", name="Close the account").click()
    v.page.get_by_label("Yes, remove our security domain").check()
    v.page.get_by_role("button", name="Confirm").click()
    expect(v.page.get_by_text("the card holder is notified")).to_be_visible()
    assert CardNotice.objects.filter(card__cin=cin).exists()

    citizen = visit()
    citizen.login("citizen1", DEMO_PASSWORD)
    citizen.goto(f"/card/{cin}/")
    expect(citizen.page.get_by_role("heading", name="Messages from your banks")).to_be_visible()
    citizen.check("portal-citizen-bank-message")
