"""Enrollment, key handover and removal over the air, through the relay API and an emulated card."""

from __future__ import annotations

import pytest

from audit.models import AuditEntry
from cards.models import CardJob, Enrollment, SecurityDomain
from gp import commands
from gp.errors import AuthenticationError
from gp.scp import SCP03
from issuers import custody
from tests.otakit import build_ota_world, enroll, open_scp03
from tests.shared_data import cap_file
from updates.ota import BANK_KVN, keyset_for

pytestmark = pytest.mark.django_db


def test_enrollment_installs_ssd_with_the_banks_keys_and_its_default_applet() -> None:
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    release = world.releases["0102030405"]
    template = world.bank.ssd_template
    template.default_applets = [{"release": release.pk, "instance_aid": "0102030405060708", "name": "Empty"}]
    template.save()
    enrollment = enroll(world)
    sd_aid = enrollment.security_domain.aid

    result = world.present()

    assert result.ok, result
    assert result.pending == 0
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.ACTIVE
    sd = SecurityDomain.objects.get(aid=sd_aid, card=world.card)
    assert sd.state == SecurityDomain.State.ACTIVE and sd.key_kvn == BANK_KVN[3]
    assert list(sd.applets.values_list("instance_aid", "package_version")) == [("0102030405060708", "0.0")]

    # The SSD opens with the bank's keys ...
    transport = world.card_transport()
    bank_keys = custody.load_static_keys(keyset_for(world.bank, world.card, sd_aid, BANK_KVN[3]))
    channel = open_scp03(transport, sd_aid, bank_keys)
    listing = channel.unwrap(transport.transmit(channel.wrap(commands.get_status(0x40))))
    assert "0102030405060708" in [e.aid.hex().upper() for e in commands.parse_get_status(listing[:-2], 0x40)]
    # ... and not with the agency's: neither the ISD keys nor the initial SSD key set remain.
    isd_keys = custody.card_isd_keys(world.agency, world.card.cin, bytes.fromhex(world.card.kdd), "kdf3")
    transport.transmit(commands.select(bytes.fromhex(sd_aid)))
    agency_try = SCP03(isd_keys.__class__(isd_keys.enc, isd_keys.mac, isd_keys.dek, version=0x30), 0x33)
    assert transport.transmit(agency_try.initialize_update())[-2:] == bytes.fromhex("6A88")
    agency_try = SCP03(isd_keys.__class__(isd_keys.enc, isd_keys.mac, isd_keys.dek, version=BANK_KVN[3]), 0x33)
    response = transport.transmit(agency_try.initialize_update())
    with pytest.raises(AuthenticationError):
        agency_try.external_authenticate(response)

    actions = set(AuditEntry.objects.filter(card_cin=world.card.cin).values_list("action", flat=True))
    assert {"job.attempt", "job.done", "receipt.load", "receipt.install", "session.done"} <= actions


def test_removal_deletes_the_ssd_and_its_content() -> None:
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": "0102030405060708"}]
    world.bank.ssd_template.save()
    enrollment = enroll(world)
    assert world.present().ok
    from cards import services

    services.request_removal(enrollment=Enrollment.objects.get(pk=enrollment.pk), actor=world.citizen)
    result = world.present()
    assert result.ok, result
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert sd.state == SecurityDomain.State.REMOVED and not sd.applets.exists()
    # The card's registry has no trace of the bank.
    transport = world.card_transport()
    isd_keys = custody.card_isd_keys(world.agency, world.card.cin, bytes.fromhex(world.card.kdd), "kdf3")
    channel = open_scp03(transport, world.card.isd_aid, isd_keys)
    for p1 in (0x40, 0x20):
        listing = channel.unwrap(transport.transmit(channel.wrap(commands.get_status(p1))))
        aids = (
            [e.aid.hex().upper() for e in commands.parse_get_status(listing[:-2], p1)]
            if listing[-2:] == b"\x90\x00"
            else []
        )
        assert sd.aid not in aids and "0102030405" not in aids and "0102030405060708" not in aids


def test_no_pending_work_ends_after_identification() -> None:
    world = build_ota_world()
    result = world.present()
    assert result.ok and result.jobs == [] and result.round_trips == 2
    assert not CardJob.objects.exists()
