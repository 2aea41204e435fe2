"""Issue 18's acceptance flow in a real browser on the demo: the agency admits Gamma Bank and
registers its own key service in the portal; Gamma's officer then, in the portal, runs an install
campaign of a product to enrolled cards that lack it, sets it as a default applet (a new
enrollment gets it, an enrolled card does not), personalises it from a CSV, and rolls out v2.0,
an Amendment H upgrade; each emulated card is read back: v2.0, the same instance, its data
intact. Code is signed by Gamma's service and checked by the cards. Pages screenshotted and
axe-checked; no 5xx."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from cards.models import Card, CardJob, Personalization, SecurityDomain
from cardsim.transport import InProcessCard
from demo.management.commands.seed_demo import DEMO_PASSWORD
from issuers import services as issuer_services
from issuers.custody.authorities import ca_public_pem
from issuers.custody_models import KeySet
from issuers.key_services import platform_identity
from issuers.models import BankDapKey, Membership, Organization
from tests.bankservice import running_bank_service
from tests.factories import PASSWORD, make_user
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

GAMMA_RID = "F047414D4D"


def upload(v: Any, path: str, slug: str) -> Release:
    v.goto(f"/bank/{slug}/releases/")
    v.page.get_by_label("CAP file").set_input_files(path)
    v.page.get_by_role("button", name="Upload and check").click()
    expect(v.page.locator("#release-details")).to_be_visible()
    return Release.objects.latest("created_at")


def present_all(cards: list[Card], base_url: str, rounds: int = 3) -> None:
    for _ in range(rounds):
        for card in cards:
            present(card, base_url)


def lifecycle(
    v: Any, slug: str, wallet_pkg: str, approve: Callable[[Release], None], base_url: str, tmp_path: Path
) -> None:
    """The bank ``slug``'s whole flow in the portal, its cards presented by their holders."""
    WALLET, WALLET_INSTANCE = wallet_pkg, wallet_pkg + "0101"
    cards = [enroll_and_present(username, slug, base_url) for username in ("citizen2", "citizen3")]

    # 1. An install campaign of the new product to every enrolled card without it.
    wallet = upload(v, cap_file(tmp_path, WALLET, (1, 0), "wallet-1.0.cap"), slug)
    approve(wallet)
    v.goto(f"/bank/{slug}/rollouts/install/")
    v.page.get_by_label("Release to install").select_option(str(wallet.pk))
    v.page.get_by_label("Instance AIDs").fill(WALLET_INSTANCE)
    v.page.get_by_label("All my enrolled cards without the package").check()
    v.page.get_by_label("Groups (cumulative)").fill("100%")
    v.page.get_by_role("button", name="Plan the campaign").click()
    rollout = Rollout.objects.get(release=wallet)
    if v.page.get_by_role("button", name="Start").count():
        v.page.get_by_role("button", name="Start").click()
    expect(v.page.locator("#rollout-state")).to_have_text("Running")
    present_all(cards, base_url)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.COMPLETED, rollout.pause_reason
    v.check("portal-bank-install-campaign-done")

    # 1b. New enrollments get the wallet too: the default applets, set in the template page.
    v.goto(f"/bank/{slug}/template/")
    row = v.page.get_by_role("group", name="Default applet 2")
    row.get_by_label("Release").select_option(str(wallet.pk))
    row.get_by_label("Instance AID").fill(WALLET + "0102")
    row.get_by_label("Name shown to citizens").fill("Beta Wallet")
    v.page.get_by_role("button", name="Save the template").click()
    expect(v.page.get_by_text("The template is saved")).to_be_visible()
    v.check("portal-bank-template-saved")
    newcomer = enroll_and_present("citizen1", slug, base_url)
    assert (WALLET + "0102") in InProcessCard(newcomer.state_file).card.state["apps"]
    assert (WALLET + "0102") not in InProcessCard(cards[0].state_file).card.state["apps"]  # enrolled before: untouched

    # 2. Personalise each card's wallet from a CSV (sealed to Beta's key service at once).
    secrets = {card.serial: f"wallet of {card.holder.username}: balance 100".encode() for card in cards}
    csv_file = tmp_path / "perso.csv"
    csv_file.write_text(
        "card_number,instance_aid,data_hex\n"
        + "".join(f"{serial},{WALLET_INSTANCE},{data.hex()}\n" for serial, data in secrets.items())
    )
    v.goto(f"/bank/{slug}/personalization/")
    v.page.get_by_label("CSV file").set_input_files(str(csv_file))
    v.page.get_by_role("button", name="Seal and queue").click()
    expect(v.page.get_by_text("is sealed to your key service")).to_be_visible()
    v.check("portal-bank-personalization")
    present_all(cards, base_url, rounds=1)
    assert Personalization.objects.filter(state=Personalization.State.DELIVERED).count() == 2
    for card in cards:
        assert InProcessCard(card.state_file).personalization(WALLET_INSTANCE) == secrets[card.serial]

    # 3. Upgrade the wallet with Amendment H through an ordinary rollout.
    wallet2 = upload(v, cap_file(tmp_path, WALLET, (2, 0), "wallet-2.0.cap"), slug)
    approve(wallet2)
    v.page.reload()  # the page now finds the release signed by the bank's key service
    expect(v.page.locator("#release-refusal")).to_have_count(0)
    v.page.get_by_role("link", name="Roll out this release").click()
    v.page.get_by_label("Groups (cumulative)").fill("100%")
    v.page.get_by_role("button", name="Plan the rollout").click()
    expect(v.page.locator("#upgrade-paths")).to_contain_text("upgrade in place")
    v.page.get_by_role("button", name="Start").click()
    expect(v.page.locator("#rollout-state")).to_have_text("Running")
    present_all([*cards, newcomer], base_url)
    expect(v.page.locator("#rollout-state")).to_have_text("Completed", timeout=15_000)
    v.check("portal-bank-upgrade-done")

    # 4. On each emulated card: the new version, the same instance, its data intact.
    for card in cards:
        transport = InProcessCard(card.state_file)
        assert tuple(transport.card.state["elfs"][WALLET]["version"]) == (2, 0)
        assert transport.personalization(WALLET_INSTANCE) == secrets[card.serial]
    assert not CardJob.objects.filter(state=CardJob.State.FAILED).exists()


def test_a_bank_admitted_through_the_portal_installs_personalises_and_upgrades_keeping_data(
    demo: None,  # noqa: F811
    visit: Any,
    tmp_path: Path,
    live_server: Any,
) -> None:
    # The agency admits Gamma Bank in the portal.
    agency = visit()
    agency.login("agency", DEMO_PASSWORD)
    agency.goto("/agency/banks/")
    agency.page.get_by_label("Name", exact=True).fill("Gamma Bank")
    agency.page.get_by_label("Short name (slug)").fill("gamma")
    agency.page.get_by_label("Registered application provider identifier (RID)").fill(GAMMA_RID)
    agency.page.get_by_role("button", name="Admit the bank").click()
    expect(agency.page.get_by_text("Gamma Bank is admitted")).to_be_visible()
    gamma = Organization.objects.get(slug="gamma")
    # Gamma runs its own key service; the agency registers it on Gamma's page.
    with running_bank_service(
        tmp_path / "gamma-service",
        bank="gamma",
        aid_prefixes=[bytes.fromhex(GAMMA_RID)],
        card_ca_pem=ca_public_pem(Organization.objects.get(slug="agency"), KeySet.Purpose.CARD_CA),
        platform_cert_pem=platform_identity().certificate_pem,
    ) as service:
        agency.goto("/agency/banks/gamma/")
        agency.page.get_by_label("Address of the key service").fill(service.url)
        agency.page.get_by_label("The service's TLS certificate (PEM)").fill(service.certificate_pem)
        agency.page.get_by_role("button", name="Register the key service").click()
        expect(agency.page.get_by_text("registered and answers")).to_be_visible()
        officer = make_user("gamma_officer")
        issuer_services.add_member(organization=gamma, user=officer, role=Membership.Role.ADMIN)
        v = visit()
        v.login("gamma_officer", PASSWORD)

        def approve(release: Release) -> None:  # Gamma's officer signs the release off in its service
            service.approve_release(bytes.fromhex(release.package_aid), bytes.fromhex(release.lfdb_sha256), "officer")

        lifecycle(v, "gamma", GAMMA_RID + "02", approve, live_server.url, tmp_path)
        gamma.refresh_from_db()
        assert gamma.ssd_template.scp == 0x11  # its security domains are its key service's alone
        # Gamma signs its code: its service's DAP key was adopted at registration, every wallet
        # release carries its signature, and its SSDs verify it (DAP Verification, §11.1.2).
        assert BankDapKey.objects.filter(bank=gamma).exists()
        assert all(r.dap_signature for r in Release.objects.filter(bank=gamma))
        assert all(
            int(sd.privileges[:2], 16) & 0x40 for sd in SecurityDomain.objects.filter(organization=gamma, is_isd=False)
        )
