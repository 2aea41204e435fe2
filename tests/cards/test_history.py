"""The card's history in words (issue 19): each kind of log entry as the sentence the holder reads,
versions included, unknown actions as words (never codes), and the card page's pagination."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import record_event
from cards import history
from issuers.models import SsdTemplate
from tests.otakit import OtaWorld, build_ota_world, enroll
from tests.shared_data import cap_file

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"
CODE = re.compile(r"\b[a-z_]+\.[a-z_]+\b")  # an action code such as job.done


def entry(action: str, slug: str = "alpha", outcome: str = "success", **details: Any) -> AuditEntry:
    return AuditEntry(action=action, organization_slug=slug, details=details, outcome=outcome, time=timezone.now())


def words(*rows: AuditEntry) -> list[str]:
    return [line.text for line in history.in_words(rows)]


@pytest.fixture
def world() -> OtaWorld:
    world = build_ota_world()
    SsdTemplate.objects.filter(organization=world.bank).update(
        default_applets=[{"release": 1, "instance_aid": INSTANCE, "package_aid": PACKAGE, "name": "wallet"}]
    )
    return world


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            entry("job.done", kind="update_applet", packages=[{"package_aid": PACKAGE, "version": "2.0"}]),
            "Alpha Bank's wallet updated to 2.0",
        ),
        (entry("job.done", slug="beta", kind="enroll_bank", packages=[]), "Beta Bank joined your card"),
        (
            entry("job.done", kind="enroll_bank", packages=[{"package_aid": PACKAGE, "version": "1.0"}]),
            "Alpha Bank joined your card, with its wallet 1.0",
        ),
        (entry("job.done", kind="remove_bank"), "Alpha Bank left your card"),
        (
            entry("job.done", kind="rotate_keys", key_version=0x32),
            "Alpha Bank's keys on your card were renewed (key set 32)",
        ),
        (entry("job.done", kind="lock_sd"), "Alpha Bank was locked on your card"),
        (entry("job.done", kind="unlock_sd"), "Alpha Bank was unlocked on your card"),
        (entry("job.done", kind="personalize", personalized=[]), "Alpha Bank delivered its data to your card"),
        (
            entry("job.done", kind="update_applet", packages=[], removed_packages=[PACKAGE]),
            "Alpha Bank removed 1 application from your card",
        ),
        (
            entry(
                "job.done",
                slug="beta",
                kind="update_applet",
                packages=[{"package_aid": "A0000008880202", "version": "3.1"}],
            ),
            "Beta Bank's application updated to 3.1",
        ),
        (entry("job.failed", kind="enroll_bank", outcome="failure"), "Adding Alpha Bank to your card failed"),
        (entry("card.blocked", slug="agency"), "Your card was blocked"),
        (entry("card.issued", slug="agency"), "Your card was issued by National Card Agency"),
        (entry("enrollment.requested"), "You asked to add Alpha Bank to your card"),
        (
            entry("repair.planned", slug="agency", steps=2),
            "The agency's check found 2 things to put right on your card",
        ),
        (entry("repair.consent_refused"), "Alpha Bank declined the repair of its part of your card"),
        (entry("repair.done", slug="agency"), "The repair of your card is complete"),
        (
            entry("card.renewed", slug="agency", valid_from="2026-12-05", valid_until="2031-12-05"),
            "Your card was renewed, valid until 2031-12-05",
        ),
        (entry("card.isd_keys_rotated", slug="agency"), "The agency put fresh keys on your card"),
        (
            entry("enrollment.carried_over", from_card="0011223344556677"),
            "Alpha Bank moves to your new card (from card 0011223344556677)",
        ),
    ],
)
def test_each_kind_of_entry_in_words(world: OtaWorld, row: AuditEntry, expected: str) -> None:
    assert words(row) == [expected]


def test_an_unknown_action_reads_as_words_never_as_its_code(world: OtaWorld) -> None:
    text = words(entry("widget.frobbed_twice"), entry("job.done", kind="future_kind"))
    assert text == ["Widget: frobbed twice (Alpha Bank)", "Work by Alpha Bank on your card was done"]
    assert not any(CODE.search(t) for t in text)


def test_the_card_page_tells_the_story_paginated() -> None:
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases[PACKAGE]
    world.bank.ssd_template.default_applets = [
        {"release": release.pk, "instance_aid": INSTANCE, "package_aid": PACKAGE, "name": "wallet"}
    ]
    world.bank.ssd_template.save()
    enroll(world)
    assert world.present().ok
    client = Client()
    client.force_login(world.citizen)
    page = client.get(f"/card/{world.card.cin}/").content.decode()
    story = re.search(r'<ol class="history">(.*?)</ol>', page, re.S)
    assert story is not None
    text = story.group(1)
    assert f"Alpha Bank joined your card, with its wallet {release.package_version}" in text
    assert "You asked to add Alpha Bank to your card" in text
    assert not CODE.search(re.sub(r"<[^>]+>", " ", text))  # never a raw action code
    assert "job.attempt" not in page and "receipt" not in text  # bookkeeping left out

    for _ in range(45):
        record_event(action="card.unblocked", subject_type="card", subject_id=world.card.cin, card_cin=world.card.cin)
    first = client.get(f"/card/{world.card.cin}/").content.decode()
    assert first.count("<li><time") == 20 and "Older" in first and "Newer" not in first
    total = history.entries(world.citizen, world.card).count()
    last_page = (total + 19) // 20
    last = client.get(f"/card/{world.card.cin}/?page={last_page}").content.decode()
    assert last.count("<li><time") == total - 20 * (last_page - 1) and "Newer" in last
    assert "Your card was issued by National Card Agency" in last  # the oldest entry comes last
    assert client.get(f"/card/{world.card.cin}/?page=abc").status_code == 200  # a bad page number: the first


def test_work_the_card_tells_itself_is_told_once(world: OtaWorld) -> None:
    from django.db import transaction

    cin = world.card.cin
    with transaction.atomic():
        record_event(
            action="job.done", subject_type="card_job", subject_id=1, card_cin=cin, details={"kind": "renew_card"}
        )
        record_event(
            action="card.renewed",
            subject_type="card",
            subject_id=cin,
            card_cin=cin,
            details={"valid_until": "2031-12-05"},
        )
    told = [line.text for line in history.in_words(history.entries(world.citizen, world.card))]
    assert told.count("Your card was renewed, valid until 2031-12-05") == 1
    assert not any(text.startswith("Your card was renewed") and "valid" not in text for text in told)
