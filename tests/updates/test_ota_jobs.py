"""Key rotation, lock/unlock and SCP02 cards over the air."""

from __future__ import annotations

import pytest

from audit.models import AuditEntry
from cards import services as card_services
from cards.models import CardJob, SecurityDomain
from gp import commands
from gp.scp import SCP02, SCP03
from issuers import custody
from issuers.custody_models import KeySet
from tests.otakit import assert_registry_matches_records, build_ota_world, enroll
from tests.shared_data import cap_file
from updates.ota import BANK_KVN, keyset_for

pytestmark = pytest.mark.django_db


def authenticate(transport, sd_aid: str, keys, scp: int = 3, i: int = 0x55):
    transport.transmit(commands.select(bytes.fromhex(sd_aid)))
    channel = SCP03(keys, 0x33) if scp == 3 else SCP02(keys, 0x13, i=i)
    response = transport.transmit(channel.initialize_update())
    if response[-2:] != b"\x90\x00":
        return None
    ea = channel.external_authenticate(response)
    assert transport.transmit(ea)[-2:] == b"\x90\x00"
    return channel


def test_bank_rotates_its_ssd_keys_over_the_air() -> None:
    world = build_ota_world()
    enrollment = enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    old = keyset_for(world.bank, world.card, sd.aid, BANK_KVN[3])
    old_keys = custody.load_static_keys(old)
    job = card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    assert job.params["to_kvn"] == BANK_KVN[3] + 1
    result = world.present()
    assert result.ok, result
    sd.refresh_from_db()
    assert sd.key_kvn == BANK_KVN[3] + 1
    old.refresh_from_db()
    assert old.state == KeySet.State.SUPERSEDED
    new_keys = custody.load_static_keys(keyset_for(world.bank, world.card, sd.aid, sd.key_kvn))
    transport = world.card_transport()
    assert authenticate(transport, sd.aid, new_keys) is not None
    # The old key version is gone from the card.
    transport.transmit(commands.select(bytes.fromhex(sd.aid)))
    assert transport.transmit(SCP03(old_keys, 0x33).initialize_update())[-2:] == bytes.fromhex("6A88")


def test_lock_blocks_delegated_operations_and_unlock_restores_them() -> None:
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"))
    enrollment = enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    card_services.request_sd_lock(security_domain=sd, lock=True, actor=world.operator)
    assert world.present().ok
    sd.refresh_from_db()
    assert sd.lifecycle == SecurityDomain.Lifecycle.LOCKED
    # A locked SSD: the policy refuses a token, the job fails for good, the refusal is audited.
    release = world.releases["0102030405"]
    job = CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.bank,
        security_domain=sd,
        params={"applets": [{"release": release.pk, "instance_aid": "0102030405060708"}]},
    )
    result = world.present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED and "locked" in job.last_error, (result, job.last_error)
    assert AuditEntry.objects.filter(action="token.denied", card_cin=world.card.cin, outcome="denied").exists()
    card_services.request_sd_lock(security_domain=sd, lock=False, actor=world.operator)
    assert world.present().ok
    sd.refresh_from_db()
    assert sd.lifecycle == SecurityDomain.Lifecycle.PERSONALIZED


def test_scp02_card_enrollment_and_removal() -> None:
    world = build_ota_world(cap_file("Empty_0102030405_8d5ac9e2_2.2.1.cap"), scp=0x02)
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": "0102030405060708"}]
    world.bank.ssd_template.save()
    enrollment = enroll(world)
    result = world.present()
    assert result.ok, result
    assert_registry_matches_records(world)
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert sd.scp == 2 and sd.key_kvn == BANK_KVN[2]
    keys = custody.load_static_keys(keyset_for(world.bank, world.card, sd.aid, BANK_KVN[2]))
    assert authenticate(world.card_transport(), sd.aid, keys, scp=2, i=sd.scp_i) is not None
    card_services.request_removal(enrollment=enrollment, actor=world.citizen)
    assert world.present().ok
    assert_registry_matches_records(world)


def test_a_wrong_key_is_never_sent_to_the_card_twice() -> None:
    """A key set on record that does not match the card: the host detects the card cryptogram
    mismatch before EXTERNAL AUTHENTICATE, alerts, and the card spends no authentication try."""
    world = build_ota_world()
    enrollment = enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    # Corrupt the record: replace the bank's key set with different keys.
    import secrets

    from gp.keys import StaticKeys

    custody.store_static_keys(
        world.bank, StaticKeys.single(secrets.token_bytes(16), BANK_KVN[3]), card_cin=world.card.cin, sd_aid=sd.aid
    )
    card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    for _ in range(3):
        with pytest.raises(Exception, match="card cryptogram did not verify"):
            world.present()
    alerts = AuditEntry.objects.filter(action="secure_channel.card_cryptogram_invalid", card_cin=world.card.cin)
    assert alerts.count() == 3
    # The card never saw a wrong EXTERNAL AUTHENTICATE: the real keys still open the SSD.
    state = world.card_transport().state
    assert all(rec.get("failures", 0) == 0 for rec in state["sds"][sd.aid]["keys"].values()), state["sds"][sd.aid]


def test_a_locked_security_domain_is_not_queued_a_key_rotation() -> None:
    """A locked SD cannot be selected (GP 2.3.1 §5.3.2): the request is refused up front instead of
    a job that fails at every presentation."""
    from cards import services as card_services
    from cards.models import SecurityDomain
    from ecard.errors import ServiceError
    from tests.otakit import build_ota_world, enroll

    world = build_ota_world()
    enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(card=world.card, organization=world.bank)
    card_services.request_sd_lock(security_domain=sd, lock=True, actor=world.citizen)
    assert world.present().ok
    sd.refresh_from_db()
    assert sd.lifecycle == SecurityDomain.Lifecycle.LOCKED
    with pytest.raises(ServiceError, match="locked") as refused:
        card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    assert refused.value.code == "state"
