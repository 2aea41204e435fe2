"""E-mails about work on a holder's card (issue 19): one when work starts waiting for the card
(not one per job), one when a presentation finished work (once per session), none when the
holder switched them off on the account page. The locmem backend captures what is sent."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.test import Client

from audit.models import AuditEntry
from cards import holder_emails, lifecycle
from cards import services as card_services
from cards.models import CardJob, CitizenEmail, NotificationPreferences, SecurityDomain
from tests.otakit import OtaWorld, build_ota_world, enroll

pytestmark = pytest.mark.django_db


def world_with_address() -> OtaWorld:
    world = build_ota_world()
    world.citizen.email = "citizen@example.org"
    world.citizen.save()
    return world


def sent(kind: str) -> list[CitizenEmail]:
    return list(CitizenEmail.objects.filter(kind=kind))


def test_one_e_mail_per_batch_of_waiting_work_and_one_when_it_is_done(
    django_capture_on_commit_callbacks: Any,
) -> None:
    world = world_with_address()
    with django_capture_on_commit_callbacks(execute=True):
        enroll(world)
        enroll(world, world.other_bank)  # a second job before the card is presented: no second e-mail
    assert len(sent(CitizenEmail.Kind.WORK_WAITING)) == 1
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["citizen@example.org"] and message.subject == "Work waits for your card"
    assert "add Alpha Bank to your card" in message.body and world.card.serial in message.body

    with django_capture_on_commit_callbacks(execute=True):
        assert world.present().ok
    done = sent(CitizenEmail.Kind.WORK_DONE)
    assert len(done) == 1 and len(mail.outbox) == 2
    assert mail.outbox[1].subject == "Work on your card is done"
    assert "Enroll bank" in mail.outbox[1].body

    with django_capture_on_commit_callbacks(execute=True):
        assert world.present().ok  # nothing left to do: no e-mail
    assert len(mail.outbox) == 2

    sd = SecurityDomain.objects.get(card=world.card, organization=world.bank)
    with django_capture_on_commit_callbacks(execute=True):
        card_services.request_key_rotation(security_domain=sd, actor=world.operator)  # a new batch
    assert len(sent(CitizenEmail.Kind.WORK_WAITING)) == 2
    assert "renew Alpha Bank's keys" in mail.outbox[-1].body


def test_switched_off_e_mails_are_not_sent(django_capture_on_commit_callbacks: Any) -> None:
    world = world_with_address()
    holder_emails.set_preferences(user=world.citizen, work_waiting=False, work_done=True)
    with django_capture_on_commit_callbacks(execute=True):
        enroll(world)
    assert mail.outbox == [] and not sent(CitizenEmail.Kind.WORK_WAITING)
    with django_capture_on_commit_callbacks(execute=True):
        world.present()
    assert [m.subject for m in mail.outbox] == ["Work on your card is done"]


def test_no_e_mail_about_work_on_a_blocked_card(django_capture_on_commit_callbacks: Any) -> None:
    world = world_with_address()
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.block_card(card=world.card, actor=world.citizen, reason="lost on the bus")
    # the lock work it queued (the ISD's SET STATUS) is no work the holder should bring the card for
    assert world.card.jobs.filter(kind=CardJob.Kind.CARD_STATUS).exists()
    assert mail.outbox and all("blocked" in m.subject.lower() for m in mail.outbox)
    assert not any(m.subject.startswith("Work waits") for m in mail.outbox)


def test_the_account_page_sets_the_four_switches() -> None:
    world = build_ota_world()
    client = Client()
    client.force_login(world.citizen)
    page = client.get("/account/e-mail/")
    assert page.status_code == 200
    html = page.content.decode()
    for name in holder_emails.SWITCHES:
        assert f'name="{name}"' in html
    assert html.count("checked") == 4  # every switch on until changed
    answer = client.post("/account/e-mail/", {"work_done": "on", "expiry": "on"})
    assert answer.status_code == 302
    saved = NotificationPreferences.objects.get(user=world.citizen)
    assert (saved.work_waiting, saved.work_done, saved.card_status, saved.expiry) == (False, True, False, True)
    entry = AuditEntry.objects.get(action="notifications.preferences_set")
    assert entry.details == {"work_waiting": False, "work_done": True, "card_status": False, "expiry": True}
    assert Client().get("/account/e-mail/").status_code == 302  # signed-in users only
