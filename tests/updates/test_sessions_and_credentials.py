"""Agent credentials (per device, revocable, never stored in clear) and idle session expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from cards.models import CardJob
from tests.otakit import ApiServer, build_ota_world, enroll
from updates import services
from updates.models import AgentCredential, CardSession

pytestmark = pytest.mark.django_db


def test_credentials_are_per_device_hashed_and_revocable() -> None:
    world = build_ota_world()
    client = APIClient()
    client.force_authenticate(world.citizen)
    created = client.post("/api/v1/agent-credentials/", {"name": "kitchen reader"}, format="json")
    assert created.status_code == 201
    token = created.json()["token"]
    credential = AgentCredential.objects.get(pk=created.json()["id"])
    assert token.split("_", 2)[2] not in credential.secret_hash  # only a hash is stored
    listed = client.get("/api/v1/agent-credentials/").json()
    assert all("token" not in item for item in listed["results"]) and listed["count"] == 2
    assert ApiServer(token).open_session("batch")["exchange"] == 1
    assert client.post(f"/api/v1/agent-credentials/{credential.pk}/revoke/").status_code == 200
    refused = APIClient().post("/api/v1/relay/sessions/", {}, format="json", HTTP_AUTHORIZATION=f"Agent {token}")
    assert refused.status_code == 401 and refused["Content-Type"] == "application/problem+json"
    # Open sessions of a revoked credential are closed at once.
    assert not CardSession.objects.filter(credential=credential, state=CardSession.State.OPEN).exists()
    # A wrong secret for an existing key id is refused the same way.
    forged = token.rsplit("_", 1)[0] + "_" + "x" * 32
    assert APIClient().post("/api/v1/relay/sessions/", {}, HTTP_AUTHORIZATION=f"Agent {forged}").status_code == 401


def test_only_card_holders_get_credentials_and_see_only_their_own() -> None:
    world = build_ota_world()
    operator = APIClient()
    operator.force_authenticate(world.operator)
    assert operator.post("/api/v1/agent-credentials/", {"name": "x"}).status_code == 403
    assert operator.get("/api/v1/agent-credentials/").json()["count"] == 0


def test_idle_sessions_expire_and_their_jobs_resume() -> None:
    world = build_ota_world()
    enroll(world)
    server = ApiServer(world.token)
    from agent.core import run_batch

    opened = server.open_session("batch")
    transport = world.card_transport()
    server.exchange(opened["session"], opened["exchange"], run_batch(transport, opened["commands"]))
    assert CardJob.objects.get(card=world.card).state == CardJob.State.RUNNING
    CardSession.objects.filter(pk=opened["session"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.expire_idle_sessions() == 1
    session = CardSession.objects.get(pk=opened["session"])
    assert session.state == CardSession.State.EXPIRED and session.sealed_channel is None
    assert CardJob.objects.get(card=world.card).state == CardJob.State.PENDING
    assert world.present().ok


def test_an_exchange_on_an_idle_session_commits_the_expiry_before_its_409() -> None:
    """Finding 9: the expiry used to be rolled back with the error that reported it, leaving the
    session open and its job running. Now the 409 comes after the expiry is committed."""
    from agent.core import RelayError, run_batch
    from audit.models import AuditEntry

    world = build_ota_world()
    enroll(world)
    server = ApiServer(world.token)
    opened = server.open_session("batch")
    transport = world.card_transport()
    second = server.exchange(opened["session"], opened["exchange"], run_batch(transport, opened["commands"]))
    assert CardJob.objects.get(card=world.card).state == CardJob.State.RUNNING
    CardSession.objects.filter(pk=opened["session"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(RelayError, match="expired"):
        server.exchange(opened["session"], second["exchange"], run_batch(transport, second["commands"]))
    session = CardSession.objects.get(pk=opened["session"])
    assert session.state == CardSession.State.EXPIRED and session.sealed_channel is None
    assert CardJob.objects.get(card=world.card).state == CardJob.State.PENDING
    assert AuditEntry.objects.filter(action="session.expired", card_cin=world.card.cin).exists()
    with pytest.raises(RelayError, match="expired"):  # and it stays closed
        server.exchange(opened["session"], second["exchange"], run_batch(transport, second["commands"]))
    assert world.present().ok
