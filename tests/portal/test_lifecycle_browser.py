"""Issue 18's acceptance flow in a real browser on the demo (Beta Bank, whose security domains are
reached only through its own key service): an install campaign puts a second product on cards
that lack it, the template's default applets give it to a new enrollment, the product is
personalised from a CSV, an Amendment H upgrade is rolled out, and each card's instance still
holds its personalised data afterwards (read back from the emulated cards). Pages screenshotted
and axe-checked; no 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from cards.models import Card, CardJob, Personalization
from cardsim.transport import InProcessCard
from demo.management.commands.seed_demo import DEMO_PASSWORD
from tests.portal.test_browser import (  # noqa: F401 - the demo fixtures
    BETA_RID,
    cap_file,
    demo,
    demo_services,
    enroll_and_present,
    present,
)
from updates.models import Release
from updates.rollout_models import Rollout

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WALLET = BETA_RID + "02"  # Beta's second product
WALLET_INSTANCE = WALLET + "0101"


def approve_at_beta_service(demo_services: Path, release: Release) -> None:  # noqa: F811
    """Beta's release officer signs the release off at Beta's own key service (it then signs its DAP)."""
    sign_off = ["--package-aid", release.package_aid, "--hash", release.lfdb_sha256, "--by", "beta-officer"]
    done = subprocess.run(
        [sys.executable, "-m", "keyservice", "approve-release", str(demo_services / "beta"), *sign_off],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def upload(v: Any, path: str) -> Release:
    v.goto("/bank/beta/releases/")
    v.page.get_by_label("CAP file").set_input_files(path)
    v.page.get_by_role("button", name="Upload and check").click()
    expect(v.page.locator("#release-details")).to_be_visible()
    return Release.objects.latest("created_at")


def present_all(cards: list[Card], base_url: str, rounds: int = 3) -> None:
    for _ in range(rounds):
        for card in cards:
            present(card, base_url)


def test_install_personalise_upgrade_and_the_data_survives(
    demo: None,  # noqa: F811
    demo_services: Path,  # noqa: F811
    visit: Any,
    tmp_path: Path,
    live_server: Any,
) -> None:
    cards = [enroll_and_present(username, "beta", live_server.url) for username in ("citizen2", "citizen3")]
    v = visit()
    v.login("beta", DEMO_PASSWORD)

    # 1. An install campaign of the new product to every enrolled card without it.
    wallet = upload(v, cap_file(tmp_path, WALLET, (1, 0), "wallet-1.0.cap"))
    approve_at_beta_service(demo_services, wallet)
    v.goto("/bank/beta/rollouts/install/")
    v.page.get_by_label("Release to install").select_option(str(wallet.pk))
    v.page.get_by_label("Instance AIDs").fill(WALLET_INSTANCE)
    v.page.get_by_label("All my enrolled cards without the package").check()
    v.page.get_by_label("Groups (cumulative)").fill("100%")
    v.page.get_by_role("button", name="Plan the campaign").click()
    rollout = Rollout.objects.get(release=wallet)
    if v.page.get_by_role("button", name="Start").count():
        v.page.get_by_role("button", name="Start").click()
    expect(v.page.locator("#rollout-state")).to_have_text("Running")
    present_all(cards, live_server.url)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.COMPLETED, rollout.pause_reason
    v.check("portal-bank-install-campaign-done")

    # 1b. New enrollments get the wallet too: the default applets, set in the template page.
    v.goto("/bank/beta/template/")
    row = v.page.get_by_role("group", name="Default applet 2")
    row.get_by_label("Release").select_option(str(wallet.pk))
    row.get_by_label("Instance AID").fill(WALLET + "0102")
    row.get_by_label("Name shown to citizens").fill("Beta Wallet")
    v.page.get_by_role("button", name="Save the template").click()
    expect(v.page.get_by_text("The template is saved")).to_be_visible()
    v.check("portal-bank-template-saved")
    newcomer = enroll_and_present("citizen1", "beta", live_server.url)
    assert (WALLET + "0102") in InProcessCard(newcomer.state_file).card.state["apps"]
    assert (WALLET + "0102") not in InProcessCard(cards[0].state_file).card.state["apps"]  # enrolled before: untouched

    # 2. Personalise each card's wallet from a CSV (sealed to Beta's key service at once).
    secrets = {card.serial: f"wallet of {card.holder.username}: balance 100".encode() for card in cards}
    csv_file = tmp_path / "perso.csv"
    csv_file.write_text(
        "card_number,instance_aid,data_hex\n"
        + "".join(f"{serial},{WALLET_INSTANCE},{data.hex()}\n" for serial, data in secrets.items())
    )
    v.goto("/bank/beta/personalization/")
    v.page.get_by_label("CSV file").set_input_files(str(csv_file))
    v.page.get_by_role("button", name="Seal and queue").click()
    expect(v.page.get_by_text("is sealed to your key service")).to_be_visible()
    v.check("portal-bank-personalization")
    present_all(cards, live_server.url, rounds=1)
    assert Personalization.objects.filter(state=Personalization.State.DELIVERED).count() == 2
    for card in cards:
        assert InProcessCard(card.state_file).personalization(WALLET_INSTANCE) == secrets[card.serial]

    # 3. Upgrade the wallet with Amendment H through an ordinary rollout.
    wallet2 = upload(v, cap_file(tmp_path, WALLET, (2, 0), "wallet-2.0.cap"))
    approve_at_beta_service(demo_services, wallet2)
    v.page.get_by_role("link", name="Roll out this release").click()
    v.page.get_by_label("Groups (cumulative)").fill("100%")
    v.page.get_by_role("button", name="Plan the rollout").click()
    expect(v.page.locator("#upgrade-paths")).to_contain_text("upgrade in place")
    v.page.get_by_role("button", name="Start").click()
    expect(v.page.locator("#rollout-state")).to_have_text("Running")
    present_all([*cards, newcomer], live_server.url)
    expect(v.page.locator("#rollout-state")).to_have_text("Completed", timeout=15_000)
    v.check("portal-bank-upgrade-done")

    # 4. On each emulated card: the new version, the same instance, its data intact.
    for card in cards:
        transport = InProcessCard(card.state_file)
        assert tuple(transport.card.state["elfs"][WALLET]["version"]) == (2, 0)
        assert transport.personalization(WALLET_INSTANCE) == secrets[card.serial]
    assert not CardJob.objects.filter(state=CardJob.State.FAILED).exists()
