"""Blocking, unblocking and replacing cards (issue 19): the services, who may call them through
the API, what a non-active card is refused, the banks' notices and their signed webhooks, and the
holder's e-mails."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from django.core import mail
from rest_framework.test import APIClient

from audit.checkpoint import parse_vkey
from audit.models import AuditEntry
from audit.services import log_verifier_key
from cards import lifecycle, webhooks
from cards import services as card_services
from cards.models import BankNotice, Card, CardJob, CitizenEmail, Enrollment, Personalization, SecurityDomain
from ecard.errors import ServiceError
from issuers import services as issuer_services
from issuers.models import Membership
from tests.factories import World, make_user
from tests.otakit import build_ota_world, enroll
from tests.shared_data import cap_file
from updates.personalization import PersonalizationItem, submit_personalization

pytestmark = pytest.mark.django_db

EMPTY_INSTANCE = "0102030405060708"


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --------------------------------------------------------------------------------------------- blocking


def test_the_holder_blocks_the_card_banks_get_a_notice_and_the_holder_an_email(
    world: World, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    card = world.cards["card3"]  # Alpha and Beta on it
    card.holder.email = "citizen3@example.org"
    card.holder.save()

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.block_card(card=card, actor=world.users["citizen3"], reason="stolen on the train")

    card.refresh_from_db()
    assert card.standing == Card.Standing.BLOCKED and card.standing_reason == "stolen on the train"
    [lock] = CardJob.objects.filter(card=card, kind=CardJob.Kind.CARD_STATUS)
    assert lock.params == {"target": "CARD_LOCKED"} and lock.state == CardJob.State.PENDING
    notices = BankNotice.objects.filter(card=card, kind=BankNotice.Kind.CARD_BLOCKED)
    assert sorted(n.organization.slug for n in notices) == ["alpha", "beta"]
    assert all(n.delivery == BankNotice.Delivery.NONE for n in notices)  # no webhook set: listed only
    entry = AuditEntry.objects.get(action="card.blocked", card_cin=card.cin)
    assert entry.details["by"] == "holder" and entry.details["banks_notified"] == ["alpha", "beta"]
    [email] = mail.outbox
    assert email.to == ["citizen3@example.org"] and card.cin in email.subject and "blocked" in email.subject
    assert CitizenEmail.objects.filter(card=card, kind=CitizenEmail.Kind.CARD_BLOCKED).count() == 1


def test_blocking_is_the_holders_or_the_agencys_and_happens_once(world: World) -> None:
    card = world.cards["card1"]
    for stranger in ("citizen2", "alpha_op", "regulator"):
        with pytest.raises(ServiceError) as refused:
            lifecycle.block_card(card=card, actor=world.users[stranger], reason="lost")
        assert refused.value.code == "forbidden", stranger
    with pytest.raises(ServiceError) as no_reason:
        lifecycle.block_card(card=card, actor=world.users["citizen1"], reason="  ")
    assert no_reason.value.field == "reason"
    lifecycle.block_card(card=card, actor=world.users["agency_op"], reason="reported by phone")
    with pytest.raises(ServiceError) as twice:
        lifecycle.block_card(card=card, actor=world.users["citizen1"], reason="lost")
    assert twice.value.code == "state"
    assert AuditEntry.objects.get(action="card.blocked").details["by"] == "agency"


def test_a_blocked_card_takes_no_new_work_token_or_data(world: World) -> None:
    card = world.cards["card1"]
    sd = world.sds["alpha@card1"]
    lifecycle.block_card(card=card, actor=world.users["citizen1"], reason="lost")
    refusals = [
        lambda: card_services.request_enrollment(
            card=card,
            bank=world.beta,
            citizen=world.users["citizen1"],
            consent_text=card_services.consent_text_for(card, world.beta),
            accepted=True,
        ),
        lambda: card_services.request_key_rotation(security_domain=sd, actor=world.users["alpha_op"]),
        lambda: card_services.request_sd_lock(security_domain=sd, lock=True, actor=world.users["alpha_op"]),
        lambda: card_services.request_removal(enrollment=world.enrollments["alpha@card1"], actor=card.holder),
        lambda: submit_personalization(
            bank=world.alpha,
            items=[PersonalizationItem(1, card.serial, world.applets["alpha@card1"].instance_aid, data=b"x")],
            actor=world.users["alpha_op"],
        ),
    ]
    jobs = CardJob.objects.count()
    for call in refusals:
        with pytest.raises(ServiceError) as refused:
            call()
        assert refused.value.code == "state"
    assert CardJob.objects.count() == jobs
    assert Enrollment.objects.get(pk=world.enrollments["alpha@card1"].pk).status == Enrollment.Status.ACTIVE


def test_unblocking_is_the_agencys_with_a_reason(
    world: World, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    card = world.cards["card1"]
    lifecycle.block_card(card=card, actor=world.users["citizen1"], reason="lost")
    for who in ("citizen1", "alpha_admin"):
        with pytest.raises(ServiceError) as refused:
            lifecycle.unblock_card(card=card, actor=world.users[who], reason="found")
        assert refused.value.code == "forbidden"
    with pytest.raises(ServiceError) as no_reason:
        lifecycle.unblock_card(card=card, actor=world.users["agency_op"], reason="")
    assert no_reason.value.field == "reason"

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.unblock_card(card=card, actor=world.users["agency_op"], reason="found at the counter")

    card.refresh_from_db()
    assert card.standing == Card.Standing.ACTIVE
    # never locked on the card: the pending lock is withdrawn and nothing replaces it
    assert list(CardJob.objects.filter(card=card, kind=CardJob.Kind.CARD_STATUS).values_list("state", flat=True)) == [
        CardJob.State.CANCELLED
    ]
    assert AuditEntry.objects.get(action="card.unblocked").reason == "found at the counter"
    assert BankNotice.objects.filter(card=card, kind=BankNotice.Kind.CARD_UNBLOCKED, organization=world.alpha).exists()
    card_services.request_key_rotation(security_domain=world.sds["alpha@card1"], actor=world.users["alpha_op"])


# --------------------------------------------------------------------------------------------- the API


def test_api_who_may_block_unblock_and_replace(world: World) -> None:
    card = world.cards["card1"]
    path = f"/api/v1/cards/{card.cin}"
    # a bank that sees the card may not block it; another citizen does not see it at all
    assert api(world.users["alpha_op"]).post(f"{path}/block/", {"reason": "x"}, format="json").status_code == 403
    assert api(world.users["citizen2"]).post(f"{path}/block/", {"reason": "x"}, format="json").status_code == 404
    answer = api(world.users["citizen1"]).post(f"{path}/block/", {"reason": "lost"}, format="json")
    assert answer.status_code == 200 and answer.json()["standing"] == "blocked"
    again = api(world.users["citizen1"]).post(f"{path}/block/", {"reason": "lost"}, format="json")
    assert again.status_code == 409 and again["Content-Type"].startswith("application/problem+json")
    assert api(world.users["citizen1"]).post(f"{path}/unblock/", {"reason": "found"}, format="json").status_code == 403
    no_reason = api(world.users["agency_op"]).post(f"{path}/unblock/", {}, format="json")
    assert no_reason.status_code == 400
    assert api(world.users["agency_op"]).post(f"{path}/unblock/", {"reason": "found"}, format="json").status_code == 200
    assert api(world.users["citizen1"]).post(f"{path}/replace/", {}, format="json").status_code == 403
    assert api(world.users["alpha_admin"]).post(f"{path}/replace/", {}, format="json").status_code == 403
    card.refresh_from_db()
    assert card.standing == Card.Standing.ACTIVE


def test_api_a_bank_lists_its_own_notices_only(world: World) -> None:
    lifecycle.block_card(card=world.cards["card3"], actor=world.users["citizen3"], reason="lost")
    lifecycle.block_card(card=world.cards["card2"], actor=world.users["citizen2"], reason="lost")  # Beta's only
    answer = api(world.users["alpha_op"]).get("/api/v1/notices/")
    assert answer.status_code == 200
    body = answer.json()
    assert body["count"] == 1
    assert [(n["bank"], n["card"], n["kind"]) for n in body["results"]] == [
        ("alpha", world.cards["card3"].cin, "card_blocked")
    ]
    assert api(world.users["citizen3"]).get("/api/v1/notices/").status_code == 403


# --------------------------------------------------------------------------------------------- replacement


def test_replacement_carries_enrollments_over_and_ends_the_old_card(
    tmp_path: Any, settings: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    settings.ECARD_CARDS_DIR = tmp_path
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": EMPTY_INSTANCE}]
    world.bank.ssd_template.save()
    old_enrollment = enroll(world)
    assert world.present().ok
    enroll(world, world.other_bank)  # requested, not on the card yet
    sd = SecurityDomain.objects.get(pk=old_enrollment.security_domain_id)
    rotation = card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    world.citizen.email = "citizen1@example.org"
    world.citizen.save()
    agent = make_user("agency_op")
    issuer_services.add_member(organization=world.agency, user=agent, role=Membership.Role.OPERATOR)

    with django_capture_on_commit_callbacks(execute=True):
        new = lifecycle.replace_card(old_card=world.card, actor=agent, reason="lost abroad")

    old = Card.objects.get(pk=world.card.pk)
    assert old.standing == Card.Standing.TERMINATED and old.replaced_by == new
    assert new.holder == world.citizen and new.standing == Card.Standing.ACTIVE and new.state_file
    rotation.refresh_from_db()
    assert rotation.state == CardJob.State.CANCELLED
    [terminate] = CardJob.objects.filter(card=old, kind=CardJob.Kind.CARD_STATUS)
    assert terminate.params == {"target": "TERMINATED"} and terminate.state == CardJob.State.PENDING
    assert not old.enrollments.filter(status__in=Enrollment.OPEN_STATUSES).exists()

    carried = {e.bank.slug: e for e in new.enrollments.select_related("bank")}
    assert set(carried) == {"alpha", "beta"}
    alpha = carried["alpha"]
    assert alpha.status == Enrollment.Status.REQUESTED and alpha.requested_by == world.citizen
    assert alpha.consented_at == old_enrollment.consented_at
    assert f"Carried over to card {new.cin} when card {old.cin} was replaced" in alpha.consent_text
    [job] = alpha.jobs.all()
    assert job.kind == CardJob.Kind.ENROLL_BANK and job.params["carried_from"] == old.cin
    assert [(a["release"], a["instance_aid"]) for a in job.params["default_applets"]] == [(release.pk, EMPTY_INSTANCE)]

    perso = BankNotice.objects.get(organization=world.bank, kind=BankNotice.Kind.PERSONALIZATION_REQUESTED)
    assert perso.card == new and perso.details["instances"] == [EMPTY_INSTANCE]
    assert perso.details["card_number"] == new.serial
    assert BankNotice.objects.filter(card=old, kind=BankNotice.Kind.CARD_REPLACED).count() == 2
    replaced = AuditEntry.objects.get(action="card.replaced", card_cin=old.cin)
    assert replaced.details["replacement"] == new.cin and sorted(replaced.details["carried"]) == ["alpha", "beta"]
    assert AuditEntry.objects.filter(action="enrollment.carried_over", card_cin=new.cin).count() == 2
    # the replacement, and (cards.holder_emails) the carried-over work now waiting for the new card
    subjects = [m.subject for m in mail.outbox]
    assert f"Your replacement card {new.cin}" in subjects and len(subjects) == 2
    assert any(s.startswith("Work waits") for s in subjects)

    old_row, rows = lifecycle.replacement_progress(new)
    assert old_row == old and [r.bank for r in rows] == ["Alpha Bank", "Beta Bank"]
    assert rows[0].applets == [EMPTY_INSTANCE] and rows[0].jobs_open == 1
    with pytest.raises(ServiceError) as refused:
        lifecycle.replace_card(old_card=old, actor=agent)
    assert refused.value.code == "state"
    assert Personalization.objects.filter(card=old, state=Personalization.State.PENDING).count() == 0


# --------------------------------------------------------------------------------------------- webhooks


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    status = 204

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(({k: v for k, v in self.headers.items()}, body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def hook_server() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "status": 204})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ecard/notices", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_gets_the_notice_signed_with_the_log_key(
    world: World, settings: Any, hook_server: tuple[str, type[_Hook]], django_capture_on_commit_callbacks: Any
) -> None:
    settings.ECARD_WEBHOOK_ALLOW_LOOPBACK = True
    url, handler = hook_server
    webhooks.set_webhook(organization=world.alpha, url=url, actor=world.users["alpha_admin"])

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.block_card(card=world.cards["card1"], actor=world.users["citizen1"], reason="lost")

    [(headers, body)] = handler.received
    payload = json.loads(body)
    assert payload["kind"] == "card_blocked" and payload["card"] == world.cards["card1"].cin
    assert payload["bank"] == "alpha" and headers["X-ECard-Notice"] == str(payload["id"])
    # the bank verifies with the log's verifier key it already pins for checkpoints
    verifier = parse_vkey(log_verifier_key(create=False) or "")
    signature = base64.b64decode(headers["X-ECard-Signature"])
    verifier.public_key.verify(signature, webhooks.signed_message(headers["X-ECard-Timestamp"], body))
    assert headers["X-ECard-Key"] == f"{verifier.name}+{verifier.key_id.hex()}"
    with pytest.raises(InvalidSignature):  # a body changed on the way does not verify
        verifier.public_key.verify(signature, webhooks.signed_message(headers["X-ECard-Timestamp"], body + b" "))
    notice = BankNotice.objects.get(pk=payload["id"])
    assert notice.delivery == BankNotice.Delivery.DELIVERED and notice.attempts == 1


def test_a_failing_webhook_is_tried_a_few_times_then_marked_failed(
    world: World, settings: Any, hook_server: tuple[str, type[_Hook]], django_capture_on_commit_callbacks: Any
) -> None:
    settings.ECARD_WEBHOOK_ALLOW_LOOPBACK = True
    url, handler = hook_server
    handler.status = 500
    webhooks.set_webhook(organization=world.alpha, url=url, actor=world.users["alpha_admin"])

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.block_card(card=world.cards["card1"], actor=world.users["citizen1"], reason="lost")

    notice = BankNotice.objects.get(organization=world.alpha)
    assert len(handler.received) == webhooks.MAX_ATTEMPTS == notice.attempts
    assert notice.delivery == BankNotice.Delivery.FAILED
    assert notice.last_error == "the webhook answered HTTP 500"
    assert AuditEntry.objects.filter(action="webhook.failed", subject_id=str(notice.pk)).exists()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.1.2.3/hook", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://192.168.0.10/", "not a public address"),
        ("https://[fd00::1]/", "not a public address"),
        ("https://127.0.0.1/hook", "not a public address"),  # loopback: only where allowed
        ("http://8.8.8.8/hook", "https://"),
        ("https://user:secret@8.8.8.8/hook", "user or password"),
        ("ftp://8.8.8.8/", "https://"),
    ],
)
def test_webhook_addresses_that_are_refused(world: World, url: str, why: str) -> None:
    with pytest.raises(ServiceError) as refused:
        webhooks.set_webhook(organization=world.alpha, url=url, actor=world.users["alpha_admin"])
    assert why in refused.value.message and refused.value.field == "url"


def test_only_a_banks_admin_sets_its_webhook_through_the_api(world: World, settings: Any) -> None:
    settings.ECARD_WEBHOOK_ALLOW_LOOPBACK = True
    body = {"url": "http://127.0.0.1:9/hook"}
    assert api(world.users["alpha_op"]).put("/api/v1/webhooks/alpha/", body, format="json").status_code == 403
    assert api(world.users["beta_admin"]).put("/api/v1/webhooks/alpha/", body, format="json").status_code == 404
    assert api(world.users["alpha_admin"]).put("/api/v1/webhooks/alpha/", body, format="json").status_code == 200
    assert api(world.users["alpha_op"]).get("/api/v1/webhooks/alpha/").json()["url"] == body["url"]
    bad = api(world.users["alpha_admin"]).put("/api/v1/webhooks/alpha/", {"url": "https://10.0.0.1/"}, format="json")
    assert bad.status_code == 400
    assert api(world.users["alpha_admin"]).delete("/api/v1/webhooks/alpha/").status_code == 204
    assert AuditEntry.objects.filter(action__in=("webhook.set", "webhook.cleared")).count() == 2
