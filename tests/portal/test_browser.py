"""Acceptance (issue 9) in a real browser: Debian's Chromium through Playwright, on a live server
with the demo data. Each main page is screenshotted at desktop and phone widths and checked with
axe-core (no serious or critical violation); no response of the server is a 5xx."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from agent.core import run_session
from agent.http import HttpServer
from audit.models import AuditEntry
from cards import services as card_services
from cards.models import Card, Enrollment
from cardsim.transport import InProcessCard
from demo.management.commands.seed_demo import DEMO_PASSWORD
from issuers.models import Organization
from portal import totp
from portal.models import TotpDevice
from tests.keyservice_process import demo_key_services, free_port_pair
from updates import services as update_services
from updates.demo_cap import build_cap
from updates.models import Release
from updates.rollout_models import Rollout

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BETA_RID = "F042455441"


@pytest.fixture
def demo_services(settings: Any, tmp_path: Path, monkeypatch: Any) -> Iterator[Path]:
    """Where seed_demo puts the demo banks' key services for this test (fresh: the agency's card
    CA is new with each test database); they run once seeded (see ``demo``)."""
    settings.ECARD_KEYSERVICE_DIR = tmp_path / "keyservice"
    monkeypatch.setenv("ECARD_DEMO_KEYSERVICE_PORT", str(free_port_pair()))
    yield settings.ECARD_KEYSERVICE_DIR


@pytest.fixture
def demo(transactional_db: None, demo_services: Path) -> Iterator[None]:
    call_command("seed_demo", stdout=io.StringIO())
    with demo_key_services(demo_services):
        yield


def test_citizen_adds_beta_bank_with_consent_and_presents_the_card(demo: None, visit: Any, live_server: Any) -> None:
    v = visit()
    page = v.page
    v.goto("/")
    # Keyboard: the first Tab reaches the skip link, which moves focus to the main content.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.get_by_role("main").get_by_role("link", name="Log in").click()
    expect(page.get_by_label("Username")).to_be_focused()
    v.check("login")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    v.check("password-reset")
    v.login("citizen2", DEMO_PASSWORD)
    card = Card.objects.get(holder__username="citizen2")
    expect(page).to_have_url(re.compile(f"/card/{card.cin}/$"))
    expect(page.get_by_role("heading", name="My card")).to_be_visible()

    page.get_by_role("link", name="Add a bank").click()
    page.get_by_label("Beta Bank").check()
    v.check("citizen-add-bank")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#consent-text")).to_contain_text("Beta Bank")
    expect(page.locator("#consent-text")).to_contain_text("Beta Pay")  # what will be installed
    # Without consent: refused, the message next to the box, nothing recorded.
    page.get_by_role("button", name="Add Beta Bank").click()
    expect(page.locator("#id_accepted_error")).to_contain_text("Tick the box")
    assert not Enrollment.objects.filter(card=card).exists()
    v.check("citizen-consent")
    page.get_by_label("I have read the statement above and I agree to it").check()
    page.get_by_role("button", name="Add Beta Bank").click()
    expect(page.get_by_text("Waiting for your card")).to_be_visible()
    expect(page.locator("#work")).to_contain_text("Enroll bank")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Connect your card").click()
    v.check("citizen-connect")
    page.get_by_label("Name of the device").fill("test reader")
    page.get_by_role("button", name="Create a credential").click()
    token = page.locator("#token").inner_text().strip()
    assert token.startswith("eca_")
    expect(page.locator("#command")).to_contain_text(f"python -m agent --server {live_server.url}")
    v.check("citizen-connect-token")

    # The card page stays open and refreshes itself while the agent presents the card.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="My card").click()
    expect(page.get_by_text("Waiting for your card")).to_be_visible()
    transport = InProcessCard(card.state_file)
    transport.reset()
    result = run_session(transport, HttpServer(live_server.url, token))
    assert result.ok, result
    applet = BETA_RID + "010101"
    expect(page.get_by_text("On the card")).to_be_visible(timeout=15_000)
    expect(page.get_by_role("cell", name=applet)).to_be_visible()
    expect(page.locator("#work")).to_contain_text("Nothing pending")
    expect(page.locator("#work")).to_contain_text("Done")
    assert Enrollment.objects.get(card=card).status == Enrollment.Status.ACTIVE
    page.reload()
    expect(page.locator("ol.history")).to_contain_text("joined your card")  # the history in words
    v.check("citizen-card")


def cap_file(tmp_path: Any, package: str, version: tuple[int, int], name: str) -> str:
    path = tmp_path / name
    path.write_bytes(build_cap(package, [package + "01"], version, name="beta.loyalty", code_size=1024))
    return str(path)


def present(card: Card, base_url: str) -> None:
    """The holder presents the card: the in-process agent against the emulated card, over HTTP."""
    _credential, token = update_services.issue_agent_credential(user=card.holder, name="test reader")
    transport = InProcessCard(card.state_file)
    transport.reset()
    result = run_session(transport, HttpServer(base_url, token))
    assert result.ok, result


def enroll_and_present(username: str, bank_slug: str, base_url: str) -> Card:
    card = Card.objects.get(holder__username=username)
    bank = Organization.objects.get(slug=bank_slug)
    card_services.request_enrollment(
        card=card,
        bank=bank,
        citizen=card.holder,
        consent_text=card_services.consent_text_for(card, bank),
        accepted=True,
    )
    present(card, base_url)
    return card


def test_bank_operator_uploads_a_release_starts_a_rollout_and_sees_progress(
    demo: None, demo_services: Path, visit: Any, tmp_path: Any, live_server: Any
) -> None:
    cards = [enroll_and_present(username, "beta", live_server.url) for username in ("citizen2", "citizen3")]
    v = visit()
    page = v.page
    v.login("beta", DEMO_PASSWORD)
    expect(page).to_have_url(re.compile("/bank/beta/$"))
    expect(page.get_by_role("img", name="Applet instances on cards")).to_contain_text(f"{BETA_RID}01 v1.0")
    v.check("bank-dashboard")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="Key sets in custody")).to_be_visible()
    v.check("bank-keys")
    nav.get_by_role("link", name="Releases").click()
    # A file that is not a CAP: refused, the reason next to the field, nothing stored.
    bad = tmp_path / "notes.cap"
    bad.write_bytes(b"not a CAP file at all")
    page.get_by_label("CAP file").set_input_files(str(bad))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator("#id_cap_file_error")).to_contain_text("not a valid CAP file")
    v.check("bank-release-refused")
    assert not Release.objects.filter(filename="notes.cap").exists()
    package = BETA_RID + "01"  # the demo's Beta Pay package: 1.0 on the cards, 2.0 published
    page.get_by_label("CAP file").set_input_files(cap_file(tmp_path, package, (3, 0), "beta-pay-3.0.cap"))
    page.get_by_label("Changes in this release").fill("Loyalty points")
    page.get_by_role("button", name="Upload and check").click()
    details = page.locator("#release-details")
    expect(details).to_contain_text(package)
    expect(details).to_contain_text(package + "01")
    release = Release.objects.get(package_aid=package, package_version="3.0")
    expect(details).to_contain_text(release.lfdb_sha256)
    expect(details).to_contain_text(f"{release.lfdb_size} bytes")
    expect(details).to_contain_text("3.0")
    expect(details).to_contain_text(release.imports[0]["aid"])
    v.check("bank-release")
    # Beta's release officer signs it off at Beta's own key service, as a bank does before a rollout
    # (the platform cannot: docs/keyservice.md); the running service applies it from its next request.
    sign_off = ["--package-aid", release.package_aid, "--hash", release.lfdb_sha256, "--by", "beta-officer"]
    approve = subprocess.run(
        [sys.executable, "-m", "keyservice", "approve-release", str(demo_services / "beta"), *sign_off],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert approve.returncode == 0, approve.stderr

    # Roll it out in two waves and watch the progress change while the cards are presented.
    page.get_by_role("link", name="Roll out this release").click()
    expect(page.get_by_label("Release to roll out")).to_have_value(str(release.pk))
    page.get_by_label("Groups (cumulative)").fill("50%, 100%")
    v.check("bank-rollouts")
    page.get_by_role("button", name="Plan the rollout").click()
    expect(page.locator("#rollout-state")).to_have_text("Ready to start")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#rollout-state")).to_have_text("Running")
    progress = page.locator("#rollout-progress")
    expect(progress).to_contain_text("0 of 2 cards updated")
    v.check("bank-rollout-running")
    for _ in range(3):  # each presentation runs whatever wave the card is in
        for card in cards:
            present(card, live_server.url)
        if Rollout.objects.get(release=release).state == "completed":
            break
    expect(progress).to_contain_text("2 of 2 cards updated", timeout=15_000)  # the page refreshed itself
    expect(page.locator("#rollout-state")).to_have_text("Completed")
    v.check("bank-rollout-done")


def test_bank_operator_cannot_open_another_banks_pages(demo: None, visit: Any) -> None:
    v = visit()
    v.login("beta", DEMO_PASSWORD)
    for path in (
        "/bank/alpha/",
        "/bank/alpha/keys/",
        "/bank/alpha/releases/",
        f"/bank/alpha/releases/{Release.objects.filter(bank__slug='alpha').first().pk}/",
        f"/bank/beta/releases/{Release.objects.filter(bank__slug='alpha').first().pk}/",
    ):
        response = v.goto(path)
        assert response.status in (403, 404), path
        expect(v.page.get_by_role("heading", name="Page not found")).to_be_visible()
    response = v.goto("/agency/")
    assert response.status == 403


def test_regulator_filters_the_log_and_verifies_an_inclusion_proof(demo: None, visit: Any) -> None:
    v = visit()
    page = v.page
    v.login("regulator", DEMO_PASSWORD)
    expect(page).to_have_url(re.compile("/regulator/$"))
    v.check("regulator")
    page.get_by_role("link", name="Browse the log").click()
    card = Card.objects.get(holder__username="citizen1")
    page.get_by_label("Card (CIN)").fill(card.cin)
    page.get_by_label("Action", exact=True).fill("enrollment.requested")
    page.get_by_role("button", name="Apply filters").click()
    entry = AuditEntry.objects.get(card_cin=card.cin, action="enrollment.requested")
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    v.check("audit-log")
    page.get_by_role("link", name=f"Entry {entry.index}").click()
    expect(page.get_by_role("status")).to_contain_text("Verified")
    v.check("audit-entry")


def test_agency_batch_upload_with_errors_is_refused_whole(demo: None, visit: Any, tmp_path: Any) -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user("citizen7", password="x")
    v = visit()
    page = v.page
    v.login("agency", DEMO_PASSWORD)
    expect(page).to_have_url(re.compile("/agency/$"))
    v.check("agency-dashboard")

    # The optional second factor: enrol with the otpauth URI, then it is asked for at login.
    page.get_by_role("navigation", name="Account").get_by_role("link", name="Second factor").click()
    page.get_by_role("button", name="Set up a second factor").click()
    expect(page.get_by_label("otpauth address")).to_contain_text("otpauth://totp/")
    v.check("second-factor")
    device = TotpDevice.objects.get(user__username="agency")
    page.get_by_label("Six-digit code from your authenticator app").fill(totp.code_at(device, time.time()))
    page.get_by_role("button", name="Turn on the second factor").click()
    expect(page.get_by_text("The second factor is on")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    v.login("agency", DEMO_PASSWORD)
    expect(page).to_have_url(re.compile("/accounts/login/verify/$"))
    v.check("login-second-factor")
    page.get_by_label("Six-digit code from your authenticator app").fill(totp.code_at(device, time.time() + totp.STEP))
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(re.compile("/agency/$"))
    before = Card.objects.count()
    csv = tmp_path / "cards.csv"
    csv.write_text("holder,scp,cin,serial\ncitizen7,03,,\nnobody,03,,\ncitizen7,09,,\n")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Cards").click()
    page.get_by_role("link", name="Issue a batch (CSV)").click()
    page.get_by_label("CSV file").set_input_files(str(csv))
    page.get_by_role("button", name="Check and issue").click()
    expect(page.locator("#id_csv_file_error")).to_contain_text("No card was issued")
    table = page.locator("#row-errors")
    expect(table).to_contain_text("no user named 'nobody'")
    expect(table.get_by_role("row").filter(has_text="scp must be 03 or 02")).to_contain_text("4")
    assert Card.objects.count() == before
    v.check("agency-batch-refused")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Banks").click()
    v.check("agency-banks")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Cards").click()
    page.get_by_label("CIN, serial or holder username").fill("citizen1")
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("table tbody tr")).to_have_count(1)
    v.check("agency-cards")


@pytest.fixture
def demo_last_month(transactional_db: None, monkeypatch: Any, demo_services: Path) -> Iterator[None]:
    """The demo data with its log entries dated in the middle of last month (only the entries' time
    moves; everything else is real), so that the default report period holds them."""
    import datetime as dt
    from types import SimpleNamespace

    from django.utils import timezone

    import audit.services
    from audit.reports import last_month

    real_now = timezone.now
    first, _last = last_month(real_now().date())
    offset = real_now() - dt.datetime.combine(first + dt.timedelta(days=10), dt.time(12), tzinfo=dt.UTC)
    monkeypatch.setattr(audit.services, "timezone", SimpleNamespace(now=lambda: real_now() - offset))
    call_command("seed_demo", stdout=io.StringIO())
    with demo_key_services(demo_services):
        yield


def test_regulator_reads_last_months_reports_csv_and_a_card_before_and_after_enrollment(
    demo_last_month: None, visit: Any, live_server: Any
) -> None:
    import csv
    import datetime as dt

    from django.utils import timezone

    from audit.reports import last_month
    from cards.models import SecurityDomain

    # citizen1's Alpha enrollment (requested by the demo data) runs over the air.
    card = Card.objects.get(holder__username="citizen1")
    present(card, live_server.url)
    alpha_sd = SecurityDomain.objects.get(card=card, organization__slug="alpha")
    applet = alpha_sd.applets.get()
    first, last = last_month(timezone.now().date())
    in_period = AuditEntry.objects.filter(index__isnull=False, time__date__gte=first, time__date__lte=last)
    issued = in_period.filter(action="card.issued").count()
    completed = in_period.filter(action="job.done", details__kind="enroll_bank").count()
    requested = in_period.filter(action="enrollment.requested").count()
    assert issued >= 3 and completed >= 1  # the demo's cards, citizen1's enrollment

    v = visit()
    page = v.page
    v.login("regulator", DEMO_PASSWORD)
    page.get_by_role("link", name="Reports").click()
    expect(page.get_by_role("heading", name="Reports", exact=True)).to_be_visible()
    expect(page.locator("#period-summary")).to_contain_text(f"From {first:%Y-%m-%d} to {last:%Y-%m-%d}")
    activity = page.locator("#report-activity table")
    expect(activity.get_by_role("row", name=f"Cards issued {issued}")).to_be_visible()
    expect(activity.get_by_role("row", name=f"Enrollments completed {completed}")).to_be_visible()
    expect(page.get_by_role("img", name="Cards issued, enrollments and removals")).to_be_visible()
    v.check("regulator-reports")

    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Cards issued, enrollments and removals.*CSV")).click()
    assert download.value.suggested_filename.endswith(".csv")
    with open(download.value.path(), newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["Period from", "Period to", "Bank", "What", "Count"]
    counts = {row[3]: int(row[4]) for row in table[1:]}
    assert all(row[:3] == [first.isoformat(), last.isoformat(), "all"] for row in table[1:])
    assert counts["Cards issued"] == issued
    assert counts["Enrollments completed"] == completed and counts["Enrollments requested"] == requested

    # The card before and after its Alpha enrollment, rebuilt from the log.
    enrolled = AuditEntry.objects.get(card_cin=card.cin, action="enrollment.requested")
    done = AuditEntry.objects.get(card_cin=card.cin, action="job.done", details__kind="enroll_bank")
    page.goto("/regulator/")
    page.get_by_role("link", name="A card at a moment").click()
    page.get_by_label("Card (CIN)").fill(card.cin)
    page.get_by_label("Moment (ISO 8601, UTC)").fill((enrolled.time - dt.timedelta(microseconds=1)).isoformat())
    page.get_by_role("button", name="Show the card").click()
    domains = page.locator("#domains")
    expect(domains).to_contain_text("(ISD)")
    expect(domains).not_to_contain_text(alpha_sd.aid)
    v.check("regulator-card-before")

    page.get_by_label("Moment (ISO 8601, UTC)").fill(done.time.isoformat())
    page.get_by_role("button", name="Show the card").click()
    row = domains.get_by_role("row").filter(has_text=alpha_sd.aid)
    expect(row).to_contain_text("alpha")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text(f"{applet.instance_aid} v{applet.package_version}")
    v.check("regulator-card-after")
    row.get_by_role("link", name=f"Entry {done.index} with its inclusion proof").click()
    expect(page.get_by_role("heading", name=f"Audit entry {done.index}")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Verified")
