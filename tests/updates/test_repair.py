"""Card repair (issue 19): the agency surveys a card whose content disagrees with the records,
reviews the plan, the touched bank consents, and ordinary jobs restore the card.

The disagreement is made behind the platform's back, in the emulated card's state file: an
unknown package (and applet) injected, an applet instance deleted.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards.models import BankNotice, CardJob, CardRepair, RepairConsent, SecurityDomain
from cardsim import store
from issuers import services as issuer_services
from issuers.models import Membership
from tests.factories import make_user
from tests.otakit import (
    ForgingRelay,
    OtaWorld,
    assert_registry_matches_records,
    build_ota_world,
    card_registry,
    enroll,
)
from tests.shared_data import cap_file
from updates import repair as repairs
from updates.engine.effects import ListedContent

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"
ISD = "A000000151000000"
STRAY_PACKAGE = "A000000999010203"  # nobody's range: only the ISD may delete it
STRAY_APPLET = "A00000099901020301"
BANK_STRAY = "010203040599"  # in Alpha Bank's range, in its security domain


def repair_world() -> tuple[OtaWorld, Any]:
    """A card with Alpha Bank and its applet installed; an agency operator."""
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases[PACKAGE]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    enroll(world)
    assert world.present().ok
    operator = make_user("agency_op")
    issuer_services.add_member(organization=world.agency, user=operator, role=Membership.Role.OPERATOR)
    return world, operator


def bank_sd(world: OtaWorld) -> SecurityDomain:
    return SecurityDomain.objects.get(card=world.card, organization=world.bank)


def tamper(
    world: OtaWorld, *, stray_in: str = ISD, stray_package: str = STRAY_PACKAGE, drop_instance: bool = True
) -> None:
    """Behind the platform's back: a package (with one applet) nobody installed, and the bank's
    applet instance gone."""
    state = store.load(world.card.state_file)
    state["elfs"][stray_package] = {
        "version": [1, 0],
        "sd": stray_in,
        "modules": [{"aid": stray_package + "01", "offset": 0}],
        "imports": [],
        "rom": False,
        "size": 100,
        "name": "stray",
    }
    state["apps"][stray_package + "0100"] = {
        "elf": stray_package,
        "module": stray_package + "01",
        "lifecycle": 7,
        "privileges": "00",
        "sd": stray_in,
        "params": "",
        "data": {},
    }
    if drop_instance:
        del state["apps"][INSTANCE]
    store.save(world.card.state_file, state)


def test_a_repair_deletes_the_unknown_and_reinstalls_the_missing(django_capture_on_commit_callbacks: Any) -> None:
    world, operator = repair_world()
    world.citizen.email = "citizen@example.org"
    world.citizen.save()
    tamper(world)
    stray_applet = STRAY_PACKAGE + "0100"
    assert STRAY_PACKAGE in card_registry(world)["elfs"] and INSTANCE not in card_registry(world)["apps"]

    with django_capture_on_commit_callbacks(execute=True):
        repair = repairs.start_repair(card=world.card, actor=operator, reason="support ticket 42")
    assert repair.state == CardRepair.State.SURVEYING
    assert [m.subject for m in mail.outbox] == ["Work waits for your card"]  # the survey waits for the card
    with django_capture_on_commit_callbacks(execute=True):
        assert world.present().ok  # the survey
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.PLANNED
    assert STRAY_PACKAGE in {e["aid"] for e in repair.observed["elfs"]}
    actions = [(s["action"], s["aid"], s["bank"]) for s in repair.plan]
    # the stray applet goes with its package (related objects); the bank's package is reinstalled
    assert actions == [("delete", STRAY_PACKAGE, ""), ("reinstall", PACKAGE, "alpha")], actions
    assert repair.plan[1]["instances"] == [INSTANCE] and repair.plan[1]["release"] == world.releases[PACKAGE].pk
    assert all(s["text"] for s in repair.plan)

    repairs.execute_repair(repair=repair, actor=operator)
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.AWAITING_CONSENT
    notice = BankNotice.objects.get(organization=world.bank, kind=BankNotice.Kind.REPAIR_CONSENT)
    assert notice.details["repair"] == repair.pk
    assert not repair.jobs.exclude(pk=repair.survey_job_id).exists()  # nothing queued before the consent

    with django_capture_on_commit_callbacks(execute=True):
        repairs.decide_consent(repair=repair, bank=world.bank, actor=world.operator, give=True)
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.RUNNING
    kinds = list(repair.jobs.exclude(pk=repair.survey_job_id).order_by("pk").values_list("kind", flat=True))
    assert kinds == [CardJob.Kind.REPAIR_ISD, CardJob.Kind.UPDATE_APPLET]
    bank_job = repair.jobs.get(kind=CardJob.Kind.UPDATE_APPLET)
    assert bank_job.params["repersonalize"] == [INSTANCE]  # lost with its data: delivered again if it had any

    with django_capture_on_commit_callbacks(execute=True):
        result = world.present()
    assert result.ok and result.pending == 0, result
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.DONE, repair.error
    assert [m.subject for m in mail.outbox] == [
        "Work waits for your card",  # the survey
        "Work on your card is done",
        "Work waits for your card",  # the restoring jobs
        "Work on your card is done",
    ]
    registry = card_registry(world)
    assert STRAY_PACKAGE not in registry["elfs"] and stray_applet not in registry["apps"]
    assert INSTANCE in registry["apps"]
    assert_registry_matches_records(world)

    actions_logged = list(
        AuditEntry.objects.filter(card_cin=world.card.cin, action__startswith="repair.")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions_logged == [
        "repair.started",
        "repair.planned",
        "repair.executed",
        "repair.consent_given",
        "repair.jobs_queued",
        "repair.done",
    ]


def test_unknown_package_in_the_banks_range_is_removed_by_the_bank() -> None:
    world, operator = repair_world()
    sd = bank_sd(world)
    tamper(world, stray_in=sd.aid, stray_package=BANK_STRAY, drop_instance=False)
    repair = repairs.start_repair(card=world.card, actor=operator)
    assert world.present().ok
    repair.refresh_from_db()
    assert [(s["action"], s["aid"], s["bank"]) for s in repair.plan] == [("remove_package", BANK_STRAY, "alpha")]
    repairs.execute_repair(repair=repair, actor=operator)
    repairs.decide_consent(repair=repair, bank=world.bank, actor=world.operator, give=True)
    job = CardJob.objects.get(card=world.card, kind=CardJob.Kind.UPDATE_APPLET, state=CardJob.State.PENDING)
    assert job.organization == world.bank and job.params["remove"] == [BANK_STRAY]
    assert world.present().ok
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.DONE, repair.error
    assert_registry_matches_records(world)


def test_a_survey_answered_without_r_mac_yields_no_plan() -> None:
    """The relay answers every GET STATUS with a bare 6A88 (no R-MAC): the card's registry is not
    proven, so no plan is made; the survey is tried again at the next presentation."""
    world, operator = repair_world()
    tamper(world)
    repair = repairs.start_repair(card=world.card, actor=operator)
    relay = ForgingRelay(world.card_transport(), {0xF2: bytes.fromhex("6A88")})
    world.present(transport=relay)
    assert relay.forged
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.SURVEYING and repair.plan == [] and repair.observed == {}
    survey = CardJob.objects.get(pk=repair.survey_job_id)
    assert survey.state == CardJob.State.PENDING and "R-MAC" in survey.last_error
    assert world.present().ok  # an honest relay next time
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.PLANNED


def test_a_refused_consent_leaves_the_banks_content_untouched() -> None:
    world, operator = repair_world()
    tamper(world)
    repair = repairs.start_repair(card=world.card, actor=operator)
    world.present()
    repair.refresh_from_db()
    repairs.execute_repair(repair=repair, actor=operator)
    repairs.decide_consent(repair=repair, bank=world.bank, actor=world.operator, give=False)
    repair.refresh_from_db()
    assert repair.consents.get().state == RepairConsent.State.REFUSED
    queued = repair.jobs.exclude(pk=repair.survey_job_id)
    assert list(queued.values_list("kind", flat=True)) == [CardJob.Kind.REPAIR_ISD]  # the ISD's own part only
    assert world.present().ok
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.DONE
    registry = card_registry(world)
    assert STRAY_PACKAGE not in registry["elfs"]
    assert INSTANCE not in registry["apps"]  # the bank said no: its security domain is as it was
    assert AuditEntry.objects.filter(action="repair.consent_refused", organization_slug="alpha").exists()


def test_only_the_agency_starts_and_only_the_touched_bank_consents() -> None:
    from ecard.errors import ServiceError

    world, operator = repair_world()
    tamper(world)
    with pytest.raises(ServiceError):
        repairs.start_repair(card=world.card, actor=world.operator)
    with pytest.raises(ServiceError):
        repairs.start_repair(card=world.card, actor=world.citizen)
    repair = repairs.start_repair(card=world.card, actor=operator)
    with pytest.raises(ServiceError):
        repairs.start_repair(card=world.card, actor=operator)  # one open repair per card
    world.present()
    repair.refresh_from_db()
    with pytest.raises(ServiceError):
        repairs.execute_repair(repair=repair, actor=world.operator)
    repairs.execute_repair(repair=repair, actor=operator)
    beta_op = make_user("beta_op")
    issuer_services.add_member(organization=world.other_bank, user=beta_op, role=Membership.Role.OPERATOR)
    with pytest.raises(ServiceError):
        repairs.decide_consent(repair=repair, bank=world.other_bank, actor=beta_op, give=True)  # not touched
    with pytest.raises(ServiceError):
        repairs.decide_consent(repair=repair, bank=world.bank, actor=beta_op, give=True)  # not its bank
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.AWAITING_CONSENT


def test_the_repair_api() -> None:
    world, operator = repair_world()
    tamper(world)
    agency, bank, other = APIClient(), APIClient(), APIClient()
    agency.force_authenticate(operator)
    bank.force_authenticate(world.operator)
    beta_op = make_user("beta_op")
    issuer_services.add_member(organization=world.other_bank, user=beta_op, role=Membership.Role.OPERATOR)
    other.force_authenticate(beta_op)
    base = f"/api/v1/cards/{world.card.cin}/repairs/"
    assert bank.post(base, {"reason": "x"}, format="json").status_code in (403, 404)
    created = agency.post(base, {"reason": "ticket"}, format="json")
    assert created.status_code == 201, created.content
    repair_id = created.json()["id"]
    assert agency.post(base, {}, format="json").status_code == 409  # one open repair per card
    world.present()
    listed = agency.get(base).json()
    assert listed[0]["state"] == "planned" and len(listed[0]["plan"]) == 2
    assert agency.post(f"{base}{repair_id}/execute/", {}, format="json").status_code == 200
    # Beta Bank sees nothing of this card; Alpha sees only its own steps
    assert other.get(base).status_code == 404
    seen = bank.get(base).json()[0]
    assert [s["bank"] for s in seen["plan"]] == ["alpha"]
    assert bank.post(f"{base}{repair_id}/consent/", {"decision": "maybe"}, format="json").status_code == 400
    answer = bank.post(f"{base}{repair_id}/consent/", {"decision": "give"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == "running"
    assert bank.post(f"{base}{repair_id}/consent/", {"decision": "give"}, format="json").status_code == 409


def test_diff_of_lock_state_keys_and_unrestorable_content() -> None:
    """The pure diff: a security domain locked on the card but not in the records is unlocked
    first; one without a proven key version gets fresh keys; a package without a release
    cannot be restored and says so."""
    listed = [
        ListedContent("A0000008880201", "sd", 0x8F, ISD),
        ListedContent("A000000888020101", "app", 0x07, "A0000008880201", elf="A0000008880202"),
    ]
    recorded = [
        repairs.RecordedSd(ISD, "", "Agency", True, True, False, 0x30, 0),
        repairs.RecordedSd(
            "A0000008880201",
            "beta",
            "Beta Bank",
            False,
            True,
            False,
            None,
            0,
            ("A000000888",),
            (repairs.RecordedApplet("A000000888020101", "A0000008880202", "1.0"),),
            (repairs.RecordedPackage("A0000008880202", "1.0", None),),
        ),
    ]
    plan = repairs.diff_registry(listed, recorded)
    assert [s["action"] for s in plan] == ["unlock", "rotate_keys", "unrestorable"]
    assert all(s["bank"] == "beta" for s in plan)
    assert "no release" in plan[-1]["text"]


def test_the_agency_repair_page() -> None:
    from django.test import Client

    world, operator = repair_world()
    tamper(world)
    page = f"/agency/cards/{world.card.cin}/repair/"
    bank = Client()
    bank.force_login(world.operator)
    assert bank.get(page).status_code == 403
    agency = Client()
    agency.force_login(operator)
    assert agency.get(page).status_code == 200
    assert agency.post(page, {"action": "execute"}).status_code == 400  # nothing to run yet: a form error
    started = agency.post(page, {"action": "start", "reason": "ticket 7"})
    assert started.status_code == 302
    assert CardRepair.objects.get(card=world.card).reason == "ticket 7"
    world.present()
    shown = agency.get(page).content.decode()
    assert "Delete package " + STRAY_PACKAGE in shown and "reinstalls package " + PACKAGE in shown
    assert agency.post(page, {"action": "execute"}).status_code == 302
    assert CardRepair.objects.get(card=world.card).state == CardRepair.State.AWAITING_CONSENT
    assert "Waiting for the bank" in agency.get(page).content.decode()


def test_the_banks_repair_page_gives_consent_and_shows_only_its_own_steps() -> None:
    from django.test import Client

    world, operator = repair_world()
    tamper(world)
    repair = repairs.start_repair(card=world.card, actor=operator, reason="ticket 9")
    assert world.present().ok
    repair.refresh_from_db()
    repairs.execute_repair(repair=repair, actor=operator)
    page = f"/bank/{world.bank.slug}/repairs/"
    bank = Client()
    bank.force_login(world.operator)
    shown = bank.get(page).content.decode()
    assert world.card.cin in shown and "reinstalls package " + PACKAGE in shown
    assert "Delete package " + STRAY_PACKAGE not in shown  # the agency's own step is not the bank's business
    other = Client()
    other.force_login(operator)
    assert other.get(page).status_code == 404  # an agency operator is no member of the bank
    answered = bank.post(page, {"repair": repair.pk, "decision": "give"})
    assert answered.status_code == 302
    repair.refresh_from_db()
    assert repair.state == CardRepair.State.RUNNING
    assert repair.consents.get().decided_by == world.operator
    assert bank.post(page, {"repair": repair.pk, "decision": "give"}).status_code == 404  # answered already
