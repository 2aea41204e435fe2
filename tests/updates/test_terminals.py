"""Terminal credentials (issue 15): an organisation's ATM or kiosk presents any card, runs only the
work the card's holder consented to, is audited with its identity, and is refused at once when
revoked or when its organisation is suspended."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.db import IntegrityError, transaction
from rest_framework.test import APIClient

from agent.core import RelayError
from audit.models import AuditEntry
from cards import services as card_services
from cards.models import CardJob, Enrollment, SecurityDomain
from issuers import services as issuer_services
from issuers.models import Membership
from tests.factories import make_user
from tests.otakit import ApiServer, OtaWorld, build_ota_world, enroll
from updates import presentation, services
from updates.models import AgentCredential, CardSession

pytestmark = pytest.mark.django_db


def bank_admin(world: OtaWorld, username: str = "alpha_admin") -> Any:
    admin = make_user(username)
    issuer_services.add_member(organization=world.bank, user=admin, role=Membership.Role.ADMIN)
    return admin


def terminal(world: OtaWorld, name: str = "ATM 12") -> tuple[AgentCredential, str]:
    return services.issue_terminal_credential(organization=world.bank, actor=bank_admin(world), name=name)


def test_a_terminal_runs_the_holders_consented_enrollment_and_is_audited_as_the_terminal() -> None:
    world = build_ota_world()
    enrollment = enroll(world)
    credential, token = terminal(world)
    before = AuditEntry.objects.count()

    result = world.present(server=ApiServer(token))

    assert result.ok and result.pending == 0, result
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.ACTIVE
    session = CardSession.objects.get(credential=credential)
    assert session.card == world.card and session.state == CardSession.State.DONE
    rows = list(AuditEntry.objects.order_by("id")[before:])
    assert {r.action for r in rows} >= {"job.attempt", "job.done", "session.done"}
    for row in rows:  # every entry of the terminal's session names the terminal and its organisation
        assert row.details["relay"] == {"terminal": credential.key_id, "organization": "alpha"}, row.action
        if row.actor_type == AuditEntry.ActorType.AGENT:
            assert row.actor_name == f"terminal:{credential.key_id}" and row.actor_org_slug == "alpha"
            assert row.as_entry(index=0)["actor"] == {
                "type": "agent",
                "id": f"terminal:{credential.key_id}",
                "organisation": "alpha",
            }


def test_a_device_session_is_not_labelled_as_a_terminal() -> None:
    world = build_ota_world()
    enroll(world)
    before = AuditEntry.objects.count()
    assert world.present().ok
    assert all("relay" not in row.details for row in AuditEntry.objects.order_by("id")[before:])


def test_a_terminal_cannot_start_work_the_holder_did_not_consent_to() -> None:
    world = build_ota_world()
    enrollment = enroll(world)
    enroll(world, world.other_bank)
    assert world.present().ok  # both banks on the card, through the holder's own device
    _credential, token = terminal(world)
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    beta_sd = SecurityDomain.objects.get(card=world.card, organization=world.other_bank)
    agency_op = make_user("agency_op")
    issuer_services.add_member(organization=world.agency, user=agency_op, role=Membership.Role.OPERATOR)
    # The agency locks Alpha's SD (the holder never asked), then Alpha rotates its keys there: the
    # rotation waits behind the lock. Beta's rotation, on another SD, is consented work and runs.
    lock = card_services.request_sd_lock(security_domain=sd, lock=True, actor=agency_op)
    rotate_alpha = card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    rotate_beta = card_services.request_key_rotation(security_domain=beta_sd, actor=world.operator)
    assert presentation.presentable_job_ids(_credential, world.card) == [rotate_beta.pk]

    result = world.present(server=ApiServer(token))

    assert not result.error and [j["id"] for j in result.jobs] == [rotate_beta.pk], result
    assert result.pending == 0 and result.waiting == 2  # what waits is for the holder, not this terminal
    for job in (lock, rotate_alpha):
        job.refresh_from_db()
        assert job.state == CardJob.State.PENDING and job.attempts == 0
    assert not AuditEntry.objects.filter(action="job.attempt", subject_id__in=[str(lock.pk), str(rotate_alpha.pk)])
    # The holder's own device runs them (the rotation then finds the SD locked, as it would have
    # without a terminal).
    assert not world.present().error
    lock.refresh_from_db()
    assert lock.state == CardJob.State.DONE


def test_consent_is_read_from_the_records() -> None:
    world = build_ota_world()
    enrollment = enroll(world)
    credential, _token = terminal(world)
    job = enrollment.jobs.get()
    assert presentation.presentable_job_ids(credential, world.card) == [job.pk]
    # An enrollment someone else asked for (not the card's holder) is not the holder's consent.
    Enrollment.objects.filter(pk=enrollment.pk).update(requested_by=world.operator)
    assert presentation.presentable_job_ids(credential, world.card) == []
    Enrollment.objects.filter(pk=enrollment.pk).update(requested_by=world.citizen)
    # A removal the bank asked for waits for the holder; one the holder asked for runs.
    assert world.present().ok
    enrollment.refresh_from_db()
    removal = card_services.request_removal(enrollment=enrollment, actor=world.operator)
    assert presentation.presentable_job_ids(credential, world.card) == []
    CardJob.objects.filter(pk=removal.pk).update(created_by=world.citizen)
    assert presentation.presentable_job_ids(credential, world.card) == [removal.pk]
    # A card nobody holds, or an unknown card, cannot be presented by a terminal.
    with pytest.raises(presentation.PresentationRefused):
        presentation.presentable_job_ids(credential, None)
    world.card.holder = None
    with pytest.raises(presentation.PresentationRefused, match="no holder"):
        presentation.presentable_job_ids(credential, world.card)


def test_a_revoked_terminal_is_refused_at_once_even_with_the_cache_warm() -> None:
    world = build_ota_world()
    enroll(world)
    admin = bank_admin(world)
    credential, token = services.issue_terminal_credential(organization=world.bank, actor=admin, name="ATM 7")
    assert services.authenticate_agent(token) is not None  # the cache is warm now
    assert cache.get(services._cache_key(credential.key_id)) is not None
    server = ApiServer(token)
    opened = server.open_session("batch")

    client = APIClient()
    client.force_authenticate(admin)
    assert client.post(f"/api/v1/terminal-credentials/{credential.pk}/revoke/").status_code == 200

    refused = APIClient().post("/api/v1/relay/sessions/", {}, format="json", HTTP_AUTHORIZATION=f"Agent {token}")
    assert refused.status_code == 401 and refused["Content-Type"] == "application/problem+json"
    assert services.authenticate_agent(token) is None
    assert CardSession.objects.get(pk=opened["session"]).state == CardSession.State.REJECTED
    entry = AuditEntry.objects.get(action="terminal_credential.revoked")
    assert entry.subject_id == credential.key_id and entry.actor_name == "alpha_admin"
    assert entry.organization_slug == "alpha"


def test_a_suspended_organisations_terminals_are_refused_at_once() -> None:
    world = build_ota_world()
    enroll(world)
    credential, token = terminal(world)
    opened = ApiServer(token).open_session("batch")
    assert services.authenticate_agent(token) is not None  # warm
    agency_admin = make_user("agency_admin")
    issuer_services.add_member(organization=world.agency, user=agency_admin, role=Membership.Role.ADMIN)
    issuer_services.set_organization_active(organization=world.bank, is_active=False, actor=agency_admin)

    assert services.authenticate_agent(token) is None
    exchange = APIClient().post(
        f"/api/v1/relay/sessions/{opened['session']}/exchanges/",
        {"exchange": 1, "responses": ["9000"]},
        format="json",
        HTTP_AUTHORIZATION=f"Agent {token}",
    )
    assert exchange.status_code == 401
    session = CardSession.objects.get(pk=opened["session"])  # its open session is closed at once
    assert session.state == CardSession.State.REJECTED and session.closed_reason.endswith("suspended")
    # A session opened before the suspension cannot go on to present a card either.
    with pytest.raises(presentation.PresentationRefused, match="suspended"):
        presentation.presentable_job_ids(credential, world.card)
    assert opened["exchange"] == 1


def test_a_revoked_terminal_session_cannot_present_a_card() -> None:
    world = build_ota_world()
    enroll(world)
    credential, _token = terminal(world)
    AgentCredential.objects.filter(pk=credential.pk).update(revoked_at="2026-01-01T00:00:00Z")
    with pytest.raises(presentation.PresentationRefused, match="revoked"):
        presentation.presentable_job_ids(credential, world.card)


def test_a_terminal_cannot_use_the_rest_of_the_api() -> None:
    world = build_ota_world()
    _credential, token = terminal(world)
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Agent {token}"}
    assert client.get("/api/v1/terminal-credentials/", **headers).status_code in (401, 403)
    assert client.get("/api/v1/cards/", **headers).status_code in (401, 403)


# ------------------------------------------------------------------------------------ API


def test_org_admins_issue_list_and_revoke_their_terminals() -> None:
    world = build_ota_world()
    admin = bank_admin(world)
    client = APIClient()
    client.force_authenticate(admin)
    created = client.post("/api/v1/terminal-credentials/", {"organization": "alpha", "name": "ATM 1"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["organization"] == "alpha" and body["issued_by"] == "alpha_admin" and body["token"].startswith("eca_")
    credential = AgentCredential.objects.get(pk=body["id"])
    assert credential.is_terminal and credential.user is None
    assert body["token"].split("_", 2)[2] not in credential.secret_hash  # only the hash is stored
    listed = client.get("/api/v1/terminal-credentials/").json()
    assert listed["count"] == 1 and "token" not in listed["results"][0]
    assert client.get(f"/api/v1/terminal-credentials/{credential.pk}/").json()["key_id"] == credential.key_id
    entry = AuditEntry.objects.get(action="terminal_credential.issued")
    assert entry.subject_id == credential.key_id and entry.actor_org_slug == "alpha"
    assert body["token"] not in str(entry.details)
    # The terminal's own token works on the relay.
    assert ApiServer(body["token"]).open_session("batch")["exchange"] == 1
    revoked = client.post(f"/api/v1/terminal-credentials/{credential.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]


def test_other_orgs_operators_and_citizens_cannot_see_issue_or_revoke() -> None:
    world = build_ota_world()
    credential, _token = terminal(world)
    beta_admin = make_user("beta_admin")
    issuer_services.add_member(organization=world.other_bank, user=beta_admin, role=Membership.Role.ADMIN)
    url = f"/api/v1/terminal-credentials/{credential.pk}/"

    beta = APIClient()
    beta.force_authenticate(beta_admin)
    assert beta.get("/api/v1/terminal-credentials/").json()["count"] == 0
    assert beta.get(url).status_code == 404
    assert beta.post(url + "revoke/").status_code == 404
    refused = beta.post("/api/v1/terminal-credentials/", {"organization": "alpha", "name": "x"}, format="json")
    assert refused.status_code == 400 and "organization" in str(refused.json())

    operator = APIClient()  # an operator of the same bank is not an admin
    operator.force_authenticate(world.operator)
    assert operator.get("/api/v1/terminal-credentials/").status_code == 403
    assert operator.post(url + "revoke/").status_code == 403
    assert operator.post("/api/v1/terminal-credentials/", {"organization": "alpha", "name": "x"}).status_code == 403

    citizen = APIClient()
    citizen.force_authenticate(world.citizen)
    assert citizen.post("/api/v1/terminal-credentials/", {"organization": "alpha", "name": "x"}).status_code == 403
    assert citizen.get(url).status_code == 403
    # A citizen's device credentials are not terminals, and the terminal is not among them.
    assert citizen.get("/api/v1/agent-credentials/").json()["count"] == 1

    credential.refresh_from_db()
    assert credential.revoked_at is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"organization": "alpha"},
        {"organization": "alpha", "name": ""},
        {"organization": "alpha", "name": "   "},
        {"organization": "alpha", "name": "x" * 101},
        {"organization": "nope", "name": "ATM"},
        {"organization": ["alpha"], "name": "ATM"},
        {"organization": "alpha", "name": {"a": 1}},
    ],
)
def test_bad_input_is_a_clear_400(payload: dict[str, Any]) -> None:
    world = build_ota_world()
    client = APIClient()
    client.force_authenticate(bank_admin(world))
    response = client.post("/api/v1/terminal-credentials/", payload, format="json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert not AgentCredential.objects.filter(organization__isnull=False).exists()


def test_regulators_cannot_run_terminals_and_suspended_orgs_cannot_issue() -> None:
    world = build_ota_world()
    regulator = issuer_services.create_organization(name="Regulator", slug="regulator", kind="regulator")
    reg_admin = make_user("reg_admin")
    issuer_services.add_member(organization=regulator, user=reg_admin, role=Membership.Role.ADMIN)
    with pytest.raises(services.ServiceError):
        services.issue_terminal_credential(organization=regulator, actor=reg_admin, name="kiosk")
    with pytest.raises(services.ServiceError):
        services.issue_terminal_credential(organization=world.bank, actor=world.operator, name="ATM")
    admin = bank_admin(world)
    world.bank.is_active = False
    world.bank.save()
    with pytest.raises(services.ServiceError, match=r"admin|suspended"):
        services.issue_terminal_credential(organization=world.bank, actor=admin, name="ATM")


def test_terminal_operations_are_in_the_openapi_schema() -> None:
    world = build_ota_world()
    client = APIClient()
    client.force_authenticate(world.operator)
    schema = client.get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "post" in paths["/api/v1/terminal-credentials/"]
    assert "post" in paths["/api/v1/terminal-credentials/{id}/revoke/"]


def test_relay_error_for_unknown_card_through_a_terminal() -> None:
    """A card the platform does not know is rejected for a terminal as for a device."""
    world = build_ota_world()
    _credential, token = terminal(world)
    world.card.cin = "00" * 10
    world.card.save()
    with pytest.raises(RelayError):
        world.present(server=ApiServer(token))


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_device_credentials_and_admits_terminals(migrator: Any) -> None:
    before, after = [("updates", "0006_auth_refusals")], [("updates", "0007_terminal_credentials")]
    executor = migrator
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    holder = apps.get_model("auth", "User").objects.create(username="holder")
    apps.get_model("updates", "AgentCredential").objects.create(
        user=holder, name="phone", key_id="0a0b0c0d0e0f", secret_hash="0" * 64
    )
    executor.loader.build_graph()
    executor.migrate(after)

    device = AgentCredential.objects.get(key_id="0a0b0c0d0e0f")
    assert device.user_id == holder.pk and device.organization_id is None and not device.is_terminal
    bank = issuer_services.create_organization(name="Alpha Bank", slug="alpha", kind="bank")
    AgentCredential.objects.create(organization=bank, name="ATM", key_id="0a", secret_hash="0" * 64)
    # A credential is a device's or a terminal's, never both or neither.
    for owner in ({}, {"user_id": holder.pk, "organization": bank}):
        with pytest.raises(IntegrityError), transaction.atomic():
            AgentCredential.objects.create(name="x", key_id="0b", secret_hash="0" * 64, **owner)


def test_an_idle_terminal_session_expires_under_the_terminals_name() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from agent.core import run_batch

    world = build_ota_world()
    enroll(world)
    credential, token = terminal(world)
    server = ApiServer(token)
    opened = server.open_session("batch")
    server.exchange(opened["session"], opened["exchange"], run_batch(world.card_transport(), opened["commands"]))
    CardSession.objects.filter(pk=opened["session"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.expire_idle_sessions() == 1
    entry = AuditEntry.objects.get(action="session.expired")
    assert entry.actor_type == AuditEntry.ActorType.SYSTEM
    assert entry.details["relay"] == {"terminal": credential.key_id, "organization": "alpha"}


def test_a_deleted_credential_is_not_accepted_from_the_cache() -> None:
    world = build_ota_world()
    assert services.authenticate_agent(world.token) is not None  # warm
    world.citizen.delete()  # the device credential goes with its holder
    assert services.authenticate_agent(world.token) is None


def test_another_process_revocation_is_honoured_within_the_local_copys_second(monkeypatch: Any) -> None:
    """Each process keeps a looked-up credential for LOCAL_CREDENTIAL_SECONDS in front of the
    shared cache. A revocation made by another process (its row written, the shared entry
    dropped, this process's copy untouched) is refused here once that second is over."""
    world = build_ota_world()
    clock = [1000.0]
    monkeypatch.setattr(services.time, "monotonic", lambda: clock[0])
    assert services.authenticate_agent(world.token) is not None  # this process's copy is warm
    key_id = world.token.split("_")[1]
    AgentCredential.objects.filter(key_id=key_id).update(revoked_at="2026-01-01T00:00:00Z")
    cache.delete(services._cache_key(key_id))  # what the other process's forget_credentials does here
    clock[0] += services.LOCAL_CREDENTIAL_SECONDS / 2
    assert services.authenticate_agent(world.token) is not None  # still this process's copy
    clock[0] += services.LOCAL_CREDENTIAL_SECONDS
    assert services.authenticate_agent(world.token) is None
