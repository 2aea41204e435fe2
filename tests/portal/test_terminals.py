"""The portal's terminal page: an organisation's admins issue (token shown once), list and revoke
its terminal credentials; nobody else sees it."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import AuditEntry
from tests.factories import World
from updates import services
from updates.models import AgentCredential

pytestmark = pytest.mark.django_db


def test_an_admin_issues_sees_once_and_revokes_a_terminal(world: World, as_user) -> None:
    admin = as_user("alpha_admin")
    assert "Terminals" in admin.get("/bank/alpha/").content.decode()
    assert admin.get("/org/alpha/terminals/").status_code == 200

    issued = admin.post("/org/alpha/terminals/", {"name": "ATM 12, Main Street"})
    assert issued.status_code == 200 and issued["Cache-Control"] == "no-store"
    credential = AgentCredential.objects.get(organization=world.alpha)
    page = issued.content.decode()
    token = page.split('id="token">', 1)[1].split("<", 1)[0]
    assert token.startswith(f"eca_{credential.key_id}_") and services.authenticate_agent(token) == credential
    assert credential.issued_by == world.users["alpha_admin"] and credential.name == "ATM 12, Main Street"
    again = admin.get("/org/alpha/terminals/").content.decode()
    assert token not in again and credential.key_id in again  # shown once, listed after

    revoked = admin.post("/org/alpha/terminals/", {"action": "revoke", "id": str(credential.pk)})
    assert revoked.status_code == 302
    credential.refresh_from_db()
    assert credential.revoked_at is not None and services.authenticate_agent(token) is None
    assert AuditEntry.objects.filter(action="terminal_credential.revoked", subject_id=credential.key_id).exists()


def test_the_agency_admin_has_kiosks(world: World, as_user) -> None:
    admin = as_user("agency_admin")
    assert "/org/agency/terminals/" in admin.get("/agency/").content.decode()
    assert admin.post("/org/agency/terminals/", {"name": "Kiosk, town hall"}).status_code == 200
    assert AgentCredential.objects.get(organization=world.agency).name == "Kiosk, town hall"
    assert "/org/agency/terminals/" not in as_user("agency_op").get("/agency/").content.decode()


def test_nobody_else_sees_or_revokes_an_organisations_terminals(world: World, as_user) -> None:
    credential, _token = services.issue_terminal_credential(
        organization=world.alpha, actor=world.users["alpha_admin"], name="ATM 1"
    )
    for username in ("beta_admin", "alpha_op", "alpha_auditor", "citizen1", "regulator", "agency_admin"):
        client = as_user(username)
        assert client.get("/org/alpha/terminals/").status_code == 404, username
        assert client.post("/org/alpha/terminals/", {"name": "rogue"}).status_code == 404, username
    assert "Terminals" not in as_user("alpha_op").get("/bank/alpha/").content.decode()
    # beta's admin, on beta's own page, cannot reach alpha's terminal by its id
    beta = as_user("beta_admin")
    assert beta.post("/org/beta/terminals/", {"action": "revoke", "id": str(credential.pk)}).status_code == 404
    assert beta.post("/org/beta/terminals/", {"action": "revoke", "id": "abc"}).status_code == 404
    assert Client().get("/org/alpha/terminals/").status_code == 302  # to the login page
    credential.refresh_from_db()
    assert credential.revoked_at is None
    assert AgentCredential.objects.filter(organization__isnull=False).count() == 1


def test_a_missing_name_is_a_form_error(world: World, as_user) -> None:
    admin = as_user("alpha_admin")
    for data in ({}, {"name": ""}, {"name": "x" * 101}):
        response = admin.post("/org/alpha/terminals/", data)
        assert response.status_code == 400, data
    assert not AgentCredential.objects.filter(organization__isnull=False).exists()
