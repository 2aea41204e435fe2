"""Portal pages of the banks' key services: the agency registers a bank's service on its page of
the bank; the bank's dashboard shows the service's status, checks it and rotates the OCE
certificate (with the real key service, tests.bankservice), and shows the platform's client
certificate to pin."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from issuers import key_services
from issuers.custody.authorities import ca_public_pem
from issuers.custody_models import KeySet
from issuers.models import BankKeyService
from tests.factories import World

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _client_dir(settings: Any, tmp_path: Path) -> None:
    settings.ECARD_KEYSERVICE_CLIENT_DIR = tmp_path / "platform-identity"  # the platform_identity fixture's


@pytest.fixture
def running(world: World, bank_service_factory: Any) -> Any:
    return bank_service_factory(
        "alpha",
        aid_prefixes=[bytes.fromhex(World.ALPHA_RID + "01")],
        card_ca_pem=ca_public_pem(world.agency, KeySet.Purpose.CARD_CA),
    )


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_agency_admin_registers_a_key_service(world: World, as_user, running: Any) -> None:
    client = as_user("agency_admin")
    banks = client.get("/agency/banks/").content.decode()
    assert 'href="/agency/banks/alpha/"' in banks and "<td>Not registered</td>" in banks
    page = client.get("/agency/banks/alpha/").content.decode()
    assert "No key service is registered" in page and "Register the key service" in page
    response = client.post(
        "/agency/banks/alpha/",
        {"endpoint": running.url, "service_certificate": running.certificate_pem},
        follow=True,
    )
    assert response.status_code == 200
    assert any("registered and answers" in m for m in _messages(response))
    page = response.content.decode()
    service = BankKeyService.objects.get(organization=world.alpha)
    assert running.url in page and service.certificate_sha256 in page and "Reachable" in page
    assert "Replace the key service" in page
    assert "<td>Reachable</td>" in client.get("/agency/banks/").content.decode()


def test_registration_errors_show_next_to_the_field(world: World, as_user) -> None:
    client = as_user("agency_admin")
    response = client.post(
        "/agency/banks/alpha/", {"endpoint": "http://127.0.0.1:8551", "service_certificate": "not a certificate"}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "HTTPS only" in page
    assert not BankKeyService.objects.exists()
    response = client.post("/agency/banks/alpha/", {"endpoint": "https://127.0.0.1:8551", "service_certificate": "x"})
    assert response.status_code == 400 and "not a PEM certificate" in response.content.decode()


def test_only_agency_admins_see_and_use_the_form(world: World, as_user) -> None:
    operator = as_user("agency_op")
    page = operator.get("/agency/banks/alpha/").content.decode()
    assert "Register the key service" not in page
    response = operator.post("/agency/banks/alpha/", {"endpoint": "https://127.0.0.1:1", "service_certificate": "x"})
    assert response.status_code == 403
    assert as_user("alpha_admin").get("/agency/banks/alpha/").status_code == 403
    assert as_user("agency_admin").get("/agency/banks/nope/").status_code == 404


def test_bank_dashboard_panel_without_service(world: World, as_user, platform_identity: Any) -> None:
    page = as_user("alpha_admin").get("/bank/alpha/").content.decode()
    assert "Key service" in page and "No key service is registered" in page
    assert "Check now" not in page and "Rotate OCE certificate" not in page
    assert platform_identity.sha256 in page  # the platform's client certificate, to pin
    assert "BEGIN CERTIFICATE" in page
    response = as_user("alpha_admin").post("/bank/alpha/key-service/check/", follow=True)
    assert response.status_code == 200 and any("no key service registered" in m for m in _messages(response))


def test_bank_dashboard_checks_and_rotates(world: World, as_user, running: Any) -> None:
    key_services.register_key_service(
        organization=world.alpha,
        endpoint=running.url,
        service_certificate_pem=running.certificate_pem,
        actor=world.users["agency_admin"],
    )
    admin = as_user("alpha_admin")
    page = admin.get("/bank/alpha/").content.decode()
    assert running.url in page and "Reachable" in page and "Check now" in page and "Rotate OCE certificate" in page
    assert "none installed" in page
    response = admin.post("/bank/alpha/key-service/rotate-oce/", follow=True)
    assert response.status_code == 200
    assert any("new OCE certificate is installed" in m for m in _messages(response))
    service = BankKeyService.objects.get(organization=world.alpha)
    assert service.oce_not_after is not None
    assert f"expires {service.oce_not_after:%Y-%m-%d}" in response.content.decode()
    assert AuditEntry.objects.filter(action="certificate.issued", details__kind="oce").count() == 1
    # the service goes away: "Check now" says so, and the dashboard shows the error
    running.stop()
    response = as_user("alpha_op").post("/bank/alpha/key-service/check/", follow=True)
    assert response.status_code == 200
    assert any("did not answer" in m for m in _messages(response))
    page = response.content.decode()
    assert "Unreachable" in page
    service.refresh_from_db()
    assert service.last_error and service.last_error in page
    # rotating now is a message, not a 500
    response = admin.post("/bank/alpha/key-service/rotate-oce/", follow=True)
    assert response.status_code == 200
    assert any("did not make a certificate request" in m for m in _messages(response))
    # back after a restart, the service still reports the certificate (kept in its directory)
    running.start()
    page = as_user("alpha_op").post("/bank/alpha/key-service/check/", follow=True).content.decode()
    assert "Reachable" in page and "does not report the certificate the agency issued" not in page
    # a service whose directory lost it: the bank is told to rotate
    running.stop()
    (running.directory / "oce-certificate.pem").unlink()
    running.start()
    page = as_user("alpha_op").post("/bank/alpha/key-service/check/", follow=True).content.decode()
    assert "Reachable" in page and "does not report the certificate the agency issued" in page


def test_expiry_warning_and_roles(world: World, as_user) -> None:
    BankKeyService.objects.create(
        organization=world.alpha,
        endpoint="https://127.0.0.1:1",
        service_certificate="-",
        certificate_sha256="ab" * 32,
        reachable=True,
        checked_at=timezone.now(),
        oce_not_after=timezone.now() + dt.timedelta(days=10),
    )
    page = as_user("alpha_auditor").get("/bank/alpha/").content.decode()
    assert "Expires in less than 30 days" in page
    assert "Check now" not in page and "Rotate OCE certificate" not in page  # auditors read only
    operator_page = as_user("alpha_op").get("/bank/alpha/").content.decode()
    assert "Check now" in operator_page and "Rotate OCE certificate" not in operator_page
    assert as_user("alpha_auditor").post("/bank/alpha/key-service/check/").status_code == 403
    assert as_user("alpha_op").post("/bank/alpha/key-service/rotate-oce/").status_code == 403
    assert as_user("beta_admin").post("/bank/alpha/key-service/rotate-oce/").status_code == 404
    assert as_user("alpha_admin").get("/bank/alpha/key-service/check/").status_code == 405


def test_forms_are_csrf_protected(world: World, as_user) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["alpha_admin"])
    assert client.post("/bank/alpha/key-service/check/").status_code == 403
    agency = Client(enforce_csrf_checks=True)
    agency.force_login(world.users["agency_admin"])
    assert agency.post("/agency/banks/alpha/", {"endpoint": "https://x", "service_certificate": "x"}).status_code == 403


def test_the_bank_dashboard_says_which_jobs_wait_for_its_key_service(world: World, as_user) -> None:
    """A job held because the bank's service was down is shown with why, and only to that bank."""
    from cards import services as card_services
    from cards.models import CardJob
    from tests.factories import make_user
    from updates.ota import hold_job

    citizen = make_user("holder")
    card = card_services.issue_card(agency=world.agency, holder=citizen, emulated=False)
    job = CardJob.objects.create(card=card, kind=CardJob.Kind.ROTATE_KEYS, organization=world.alpha, attempts=1)
    page = as_user("alpha_admin").get("/bank/alpha/").content.decode()
    assert "wait for your key service" not in page and "waits for your key service" not in page

    hold_job(job, "Alpha Bank's key service is unavailable (connection refused); the job waits for it")
    page = as_user("alpha_admin").get("/bank/alpha/").content.decode()
    assert "1 job waits for your key service" in page and "connection refused" in page and card.cin in page
    job.refresh_from_db()
    assert job.state == CardJob.State.PENDING and job.attempts == 0
