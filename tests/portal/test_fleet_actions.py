"""The bank's fleet actions in the portal (issue 18): lock and unlock its SSD on a card, clear the
failed authentications, close a customer's account (SSD removed, the holder notified on their
card page and by e-mail), revoke a release, rotate every card's keys as a rollout. Confirmation
forms (POST + CSRF), another bank's pages are 404, read-only roles 403, every action audited."""

from __future__ import annotations

import pytest
from django.core import mail
from django.test import Client

from audit.models import AuditEntry
from cards.models import CardJob, Enrollment, SecurityDomain
from tests.factories import World
from updates.demo_cap import build_cap
from updates.models import Release
from updates.releases import create_release
from updates.rollout_models import CardNotice, Rollout

pytestmark = pytest.mark.django_db


def login(world: World, username: str) -> Client:
    client = Client()
    client.force_login(world.users[username])
    return client


def card_url(world: World, card: str = "card1", bank: str = "alpha") -> str:
    return f"/bank/{bank}/cards/{world.cards[card].cin}/"


def test_lock_and_unlock_need_a_confirmation_and_are_audited(world: World) -> None:
    client = login(world, "alpha_op")
    page = client.get(card_url(world))
    assert page.status_code == 200 and world.sds["alpha@card1"].aid in page.content.decode()
    unconfirmed = client.post(card_url(world) + "lock/", {})
    assert unconfirmed.status_code == 400 and 'id="id_confirm_error"' in unconfirmed.content.decode()
    assert not CardJob.objects.filter(kind=CardJob.Kind.LOCK_SD).exists()
    assert client.post(card_url(world) + "lock/", {"confirm": "on"}).status_code == 302
    job = CardJob.objects.get(kind=CardJob.Kind.LOCK_SD)
    assert job.security_domain_id == world.sds["alpha@card1"].pk
    queued = AuditEntry.objects.get(action="job.queued", subject_id=str(job.pk))
    assert queued.actor_name == "alpha_op" and queued.details["kind"] == "lock_sd"
    again = client.post(card_url(world) + "lock/", {"confirm": "on"})
    assert again.status_code == 400 and "already pending" in again.content.decode()
    CardJob.objects.filter(pk=job.pk).update(state=CardJob.State.DONE)
    SecurityDomain.objects.filter(pk=job.security_domain_id).update(lifecycle="LOCKED")
    assert client.post(card_url(world) + "unlock/", {"confirm": "on"}).status_code == 302
    assert CardJob.objects.filter(kind=CardJob.Kind.UNLOCK_SD, security_domain=job.security_domain_id).exists()


def test_post_without_csrf_token_is_refused(world: World) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["alpha_op"])
    assert client.post(card_url(world) + "lock/", {"confirm": "on"}).status_code == 403
    assert not CardJob.objects.filter(kind=CardJob.Kind.LOCK_SD).exists()


@pytest.mark.parametrize("action", ["lock", "unlock", "reset-failures", "close"])
def test_another_banks_card_does_not_exist_and_auditors_only_read(world: World, action: str) -> None:
    # card1 carries only Alpha: Beta's operator gets 404 on Alpha's URL and on its own bank's URL of card1
    beta = login(world, "beta_op")
    assert beta.post(card_url(world) + f"{action}/", {"confirm": "on", "reason": "x"}).status_code == 404
    assert beta.post(card_url(world, bank="beta") + f"{action}/", {"confirm": "on", "reason": "x"}).status_code == 404
    assert login(world, "citizen1").get(card_url(world)).status_code == 404
    assert login(world, "alpha_auditor").get(card_url(world)).status_code == 200
    assert login(world, "alpha_auditor").post(card_url(world) + f"{action}/", {"confirm": "on"}).status_code == 403
    assert not CardJob.objects.filter(state=CardJob.State.PENDING).exists()


def test_clearing_failed_authentications_is_for_admins(world: World) -> None:
    sd = world.sds["alpha@card1"]
    SecurityDomain.objects.filter(pk=sd.pk).update(auth_failures=2)
    assert login(world, "alpha_op").post(card_url(world) + "reset-failures/", {"confirm": "on"}).status_code == 403
    assert login(world, "alpha_admin").post(card_url(world) + "reset-failures/", {"confirm": "on"}).status_code == 302
    sd.refresh_from_db()
    assert sd.auth_failures == 0
    entry = AuditEntry.objects.get(action="secure_channel.failures_cleared")
    assert entry.actor_name == "alpha_admin" and entry.details == {"previous_failures": 2}


def test_closing_an_account_removes_the_sd_and_notifies_the_holder(
    world: World, django_capture_on_commit_callbacks
) -> None:
    citizen = world.users["citizen1"]
    citizen.email = "citizen1@example.org"
    citizen.save()
    client = login(world, "alpha_op")
    refused = client.post(card_url(world) + "close/", {"reason": "Closed at your request."})
    assert refused.status_code == 400 and not CardNotice.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(card_url(world) + "close/", {"reason": "Closed at your request.", "confirm": "on"})
    assert response.status_code == 302
    enrollment = world.enrollments["alpha@card1"]
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.REMOVAL_REQUESTED
    assert CardJob.objects.filter(kind=CardJob.Kind.REMOVE_BANK, enrollment=enrollment, state="pending").exists()
    notice = CardNotice.objects.get()
    assert notice.holder == citizen and notice.organization == world.alpha and notice.emailed
    closure = [m for m in mail.outbox if m.subject != "Work waits for your card"]
    assert len(closure) == 1 and closure[0].to == ["citizen1@example.org"]
    assert "Closed at your request." in closure[0].body and "Alpha Bank" in closure[0].subject
    # and the removal waits for the card (cards.holder_emails.work_waiting)
    assert [m.subject for m in mail.outbox].count("Work waits for your card") == 1
    entry = AuditEntry.objects.get(action="enrollment.closed_by_bank")
    assert entry.card_cin == world.cards["card1"].cin and entry.actor_name == "alpha_op"
    assert entry.details["holder_notified"] is True
    page = login(world, "citizen1").get(f"/card/{world.cards['card1'].cin}/").content.decode()
    assert 'id="notices"' in page and "Closed at your request." in page and "Alpha Bank" in page
    other = login(world, "citizen3").get(f"/card/{world.cards['card3'].cin}/").content.decode()
    assert 'id="notices"' not in other
    twice = client.post(card_url(world) + "close/", {"reason": "again", "confirm": "on"})
    assert twice.status_code == 400 and CardNotice.objects.count() == 1


def test_revoking_a_release_from_the_portal(world: World) -> None:
    package = World.ALPHA_RID + "015042"
    release = create_release(
        bank=world.alpha,
        cap_bytes=build_cap(package, [package + "01"], (1, 0)),
        filename="t.cap",
        actor=world.users["alpha_op"],
    )
    url = f"/bank/alpha/releases/{release.pk}/revoke/"
    assert login(world, "beta_op").post(url, {"confirm": "on"}).status_code == 404
    assert login(world, "alpha_auditor").post(url, {"confirm": "on"}).status_code == 403
    client = login(world, "alpha_op")
    assert client.post(url, {"reason": "bug"}).status_code == 400
    assert client.post(url, {"reason": "bug", "confirm": "on"}).status_code == 302
    release.refresh_from_db()
    assert release.state == Release.State.REVOKED
    assert AuditEntry.objects.get(action="release.revoked").actor_name == "alpha_op"


def test_rotating_every_cards_keys_is_a_rollout(world: World) -> None:
    client = login(world, "alpha_op")
    form = {"groups": "50%, 100%", "success_threshold": 100, "error_threshold": 20, "retry_count": 1}
    assert client.post("/bank/alpha/rollouts/rotate-keys/", form).status_code == 400  # not confirmed
    response = client.post("/bank/alpha/rollouts/rotate-keys/", {**form, "confirm": "on"})
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    assert rollout.target_kind == "rotate" and rollout.total == 2 and rollout.group_spec == ["50%", "100%"]
    assert AuditEntry.objects.get(action="rollout.created").details["kind"] == "rotate"
    detail = client.get(f"/bank/alpha/rollouts/{rollout.pk}/").content.decode()
    assert "Key rotation of every security domain" in detail
    assert login(world, "beta_op").get(f"/bank/alpha/rollouts/{rollout.pk}/").status_code == 404


def test_card_lookup(world: World) -> None:
    client = login(world, "alpha_op")
    cin = world.cards["card3"].cin
    assert client.get("/bank/alpha/cards/", {"cin": cin.lower()}).url == f"/bank/alpha/cards/{cin}/"
    listing = client.get("/bank/alpha/cards/").content.decode()
    assert world.cards["card1"].cin in listing and world.cards["card2"].cin not in listing
