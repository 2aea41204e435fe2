"""Registry services and their API: rules, refusals, audit entries in the same transaction."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards import services
from cards.models import Card, CardJob, Enrollment, SecurityDomain
from ecard.errors import ServiceError
from gp.aids import ISD_AID
from issuers import services as issuer_services
from issuers.models import Organization
from tests.factories import World, make_user

pytestmark = pytest.mark.django_db


def api(world: World, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[username])
    return client


def test_aid_ranges_of_two_banks_never_overlap(world: World) -> None:
    with pytest.raises(ServiceError, match="overlaps"):
        issuer_services.add_aid_range(organization=world.beta, rid=World.ALPHA_RID, pix_prefix="0102")
    with pytest.raises(ServiceError, match="overlaps"):
        issuer_services.add_aid_range(organization=world.beta, rid=World.ALPHA_RID, pix_prefix="")
    # A disjoint range is fine, and the same bank may narrow nothing twice.
    issuer_services.add_aid_range(organization=world.beta, rid=World.ALPHA_RID, pix_prefix="03")
    with pytest.raises(ServiceError):
        issuer_services.add_aid_range(organization=world.beta, rid="A0000008", pix_prefix="")


def test_agency_admits_a_bank_through_the_api_and_it_is_logged(world: World) -> None:
    response = api(world, "agency_op").post(
        "/api/v1/organizations/", {"name": "Gamma Bank", "rid": "a000000777", "pix_prefix": "10"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "bank" and body["aid_ranges"] == [
        {"rid": "A000000777", "pix_prefix": "10", "prefix": "A00000077710"}
    ]
    assert AuditEntry.objects.filter(action="bank.admitted", subject_id="gamma-bank").exists()
    refused = api(world, "alpha_admin").post(
        "/api/v1/organizations/", {"name": "Delta Bank", "rid": "A000000666"}, format="json"
    )
    assert refused.status_code == 403
    assert not Organization.objects.filter(name="Delta Bank").exists()


def test_overlapping_admission_is_a_problem_document_and_stores_nothing(world: World) -> None:
    before = (Organization.objects.count(), AuditEntry.objects.count())
    response = api(world, "agency_op").post(
        "/api/v1/organizations/", {"name": "Copycat Bank", "rid": World.ALPHA_RID}, format="json"
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert "overlaps" in response.json()["detail"]
    assert (Organization.objects.count(), AuditEntry.objects.count()) == before


def test_enrollment_needs_the_exact_consent_and_the_holder(world: World) -> None:
    card = world.cards["card2"]
    citizen = world.users["citizen2"]
    client = api(world, "citizen2")
    consent = client.get(f"/api/v1/enrollments/consent/?card={card.cin}&bank=alpha").json()["consent_text"]
    assert "Alpha Bank" in consent and card.cin in consent
    bad = client.post(
        "/api/v1/enrollments/",
        {"card": card.cin, "bank": "alpha", "consent_text": consent + " and more", "accepted": True},
        format="json",
    )
    assert bad.status_code == 400 and bad.json()["errors"] == {
        "consent_text": ["the consent text does not match what would be installed"]
    }
    declined = client.post(
        "/api/v1/enrollments/", {"card": card.cin, "bank": "alpha", "consent_text": consent, "accepted": False}
    )
    assert declined.status_code == 400
    with pytest.raises(ServiceError, match="not your card"):
        services.request_enrollment(
            card=card, bank=world.alpha, citizen=world.users["citizen1"], consent_text=consent, accepted=True
        )
    ok = client.post(
        "/api/v1/enrollments/",
        {"card": card.cin, "bank": "alpha", "consent_text": consent, "accepted": True},
        format="json",
    )
    assert ok.status_code == 201, ok.content
    enrollment = Enrollment.objects.get(pk=ok.json()["id"])
    assert enrollment.consent_text == consent and enrollment.requested_by == citizen
    sd = enrollment.security_domain
    assert sd.state == SecurityDomain.State.PENDING and sd.aid == World.ALPHA_RID + "01" + "5344"
    job = CardJob.objects.get(enrollment=enrollment)
    assert job.kind == CardJob.Kind.ENROLL_BANK and job.state == CardJob.State.PENDING
    actions = list(AuditEntry.objects.filter(card_cin=card.cin).values_list("action", flat=True))
    assert "enrollment.requested" in actions and "job.queued" in actions
    again = client.post(
        "/api/v1/enrollments/", {"card": card.cin, "bank": "alpha", "consent_text": consent, "accepted": True}
    )
    assert again.status_code == 409


def test_a_failing_step_rolls_back_the_enrollment_and_its_audit_entries(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = world.cards["card2"]
    consent = services.consent_text_for(card, world.alpha)
    before = (Enrollment.objects.count(), SecurityDomain.objects.count(), AuditEntry.objects.count())

    def broken_queue(**kwargs: object) -> None:
        raise RuntimeError("queue down")

    monkeypatch.setattr(services, "_queue_job", broken_queue)
    with pytest.raises(RuntimeError):
        services.request_enrollment(
            card=card, bank=world.alpha, citizen=world.users["citizen2"], consent_text=consent, accepted=True
        )
    assert (Enrollment.objects.count(), SecurityDomain.objects.count(), AuditEntry.objects.count()) == before


def test_removal_of_an_active_bank_queues_delete_and_of_a_pending_one_cancels(world: World) -> None:
    client = api(world, "citizen1")
    enrollment = world.enrollments["alpha@card1"]
    response = client.delete(f"/api/v1/enrollments/{enrollment.pk}/")
    assert response.status_code == 202 and response.json()["kind"] == "remove_bank"
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.REMOVAL_REQUESTED
    assert enrollment.security_domain.state == SecurityDomain.State.REMOVING
    assert client.delete(f"/api/v1/enrollments/{enrollment.pk}/").status_code == 409

    card2 = world.cards["card2"]
    pending = services.request_enrollment(
        card=card2,
        bank=world.alpha,
        citizen=world.users["citizen2"],
        consent_text=services.consent_text_for(card2, world.alpha),
        accepted=True,
    )
    services.request_removal(enrollment=pending, actor=world.users["citizen2"])
    assert pending.jobs.get(kind=CardJob.Kind.ENROLL_BANK).state == CardJob.State.CANCELLED


def test_bank_rotates_its_own_keys_once_at_a_time(world: World) -> None:
    sd = world.sds["alpha@card1"]
    client = api(world, "alpha_op")
    first = client.post(f"/api/v1/security-domains/{sd.pk}/rotate-keys/")
    assert first.status_code == 202 and first.json()["kind"] == "rotate_keys"
    assert client.post(f"/api/v1/security-domains/{sd.pk}/rotate-keys/").status_code == 409
    assert api(world, "agency_op").post(f"/api/v1/security-domains/{sd.pk}/rotate-keys/").status_code == 403


def test_lock_and_unlock_rules(world: World) -> None:
    sd = world.sds["beta@card2"]
    client = api(world, "agency_op")
    assert client.post(f"/api/v1/security-domains/{sd.pk}/unlock/").status_code == 409  # not locked
    assert client.post(f"/api/v1/security-domains/{sd.pk}/lock/").json()["kind"] == "lock_sd"
    assert client.post(f"/api/v1/security-domains/{sd.pk}/lock/").status_code == 409  # already pending
    isd = world.cards["card2"].security_domains.get(is_isd=True)
    assert client.post(f"/api/v1/security-domains/{isd.pk}/lock/").status_code == 400


def test_agency_issues_a_card_with_its_isd(world: World) -> None:
    holder = make_user("newcitizen")
    response = api(world, "agency_op").post("/api/v1/cards/", {"holder": "newcitizen", "emulated": False})
    assert response.status_code == 201, response.content
    card = Card.objects.get(pk=response.json()["id"])
    assert card.holder == holder and card.lifecycle == Card.Lifecycle.SECURED
    isd = card.security_domains.get()
    assert isd.is_isd and isd.aid == ISD_AID.hex().upper() and isd.privileges == "9EFE80"
    assert AuditEntry.objects.filter(action="card.issued", card_cin=card.cin).exists()
    assert api(world, "alpha_op").post("/api/v1/cards/", {"emulated": False}).status_code == 403
    # An organisation member cannot be a card holder.
    refused = api(world, "agency_op").post("/api/v1/cards/", {"holder": "alpha_op", "emulated": False})
    assert refused.status_code == 400


def test_org_admin_manages_only_own_members(world: World) -> None:
    newhire = make_user("newhire")
    client = api(world, "alpha_admin")
    ok = client.post("/api/v1/members/", {"organization": "alpha", "username": "newhire", "role": "operator"})
    # Adding a member is an invitation (202); the user is a member once they accept it.
    assert ok.status_code == 202 and ok.json()["state"] == "pending"
    assert not newhire.memberships.exists()
    invitee = APIClient()
    invitee.force_authenticate(newhire)
    assert invitee.post(f"/api/v1/invitations/{ok.json()['id']}/accept/").status_code == 200
    assert newhire.memberships.get().organization == world.alpha
    assert client.post(
        "/api/v1/members/", {"organization": "beta", "username": "newhire", "role": "admin"}
    ).status_code in (403, 400)
    assert (
        api(world, "alpha_op")
        .post("/api/v1/members/", {"organization": "alpha", "username": "newhire", "role": "admin"})
        .status_code
        == 403
    )
