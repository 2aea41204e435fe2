"""A real card imported from a manufacturer's file enrolls a bank as any card does: the engine
opens its ISD with the card's own stored keys (not diversified), verifies the card's receipts with
the receipt key from the file, and the bank's SSD ends with the bank's keys only. In process (the
relay API through Django's test client); tests/agent/test_e2e_pcsc_manufacturer.py does the same
over PC/SC."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core import run_session
from cards import services as card_services
from cards.models import Enrollment, SecurityDomain
from cardsim.transport import InProcessCard
from ecard.errors import ServiceError
from gp.errors import GPError
from issuers import custody
from tests.manufacturer_kit import real_card
from tests.otakit import ApiServer, build_ota_world, open_scp03
from tests.shared_data import cap_file
from updates.ota import BANK_KVN, keyset_for, ssd_initial_keyset

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
INSTANCE = "0102030405060708"


def test_a_card_from_a_manufacturer_line_enrolls_a_bank(tmp_path: Path) -> None:
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    real = real_card(world.agency, tmp_path)
    enrollment = card_services.request_enrollment(
        card=real.card,
        bank=world.bank,
        citizen=real.holder,
        consent_text=card_services.consent_text_for(real.card, world.bank),
        accepted=True,
    )
    transport = InProcessCard(real.state)
    transport.reset()
    result = run_session(transport, ApiServer(real.token), mode="batch")
    assert result.ok, result

    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.ACTIVE
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert sd.state == SecurityDomain.State.ACTIVE and sd.key_kvn == BANK_KVN[3]
    assert list(sd.applets.values_list("instance_aid", flat=True)) == [INSTANCE]
    real.card.refresh_from_db()
    assert real.card.receipt_counter > 0  # the card's receipts verified with the file's receipt key

    card = InProcessCard(real.state)
    card.reset()
    bank_keys = custody.load_static_keys(keyset_for(world.bank, real.card, sd.aid, BANK_KVN[3]))
    open_scp03(card, sd.aid, bank_keys)  # the SSD opens with the bank's keys ...
    initial = custody.load_static_keys(ssd_initial_keyset(real.card))
    card.reset()
    with pytest.raises((AssertionError, GPError)):
        open_scp03(card, sd.aid, initial)  # ... and no longer with the file's initial SSD key


def test_a_real_card_from_stock_replaces_an_emulated_one_and_gets_its_bank(tmp_path: Path) -> None:
    from cards import lifecycle
    from cards.models import Card
    from issuers import services as issuer_services
    from issuers.models import Membership
    from tests.factories import make_user
    from tests.manufacturer_kit import stock_card
    from tests.otakit import enroll

    world = build_ota_world(cap_file(EMPTY))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    enroll(world)
    assert world.present().ok
    stock, state = stock_card(world.agency, tmp_path)
    assert stock.holder_id is None and stock.key_scheme == "stored"
    officer = make_user("agency_officer")
    issuer_services.add_member(organization=world.agency, user=officer, role=Membership.Role.OPERATOR)

    new = lifecycle.replace_card(old_card=world.card, actor=officer, reason="lost", new_card_cin=stock.cin.lower())
    assert new.pk == stock.pk and new.holder == world.citizen
    world.card.refresh_from_db()
    assert world.card.standing == Card.Standing.TERMINATED and world.card.replaced_by == new
    with pytest.raises(ServiceError, match="already has a holder"):  # a stock card serves one replacement
        lifecycle.replace_card(old_card=new, actor=officer, new_card_cin=stock.cin)

    transport = InProcessCard(state)
    transport.reset()
    assert run_session(transport, ApiServer(world.token), mode="batch").ok
    enrollment = Enrollment.objects.get(card=new, bank=world.bank)
    assert enrollment.status == Enrollment.Status.ACTIVE
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert list(sd.applets.values_list("instance_aid", flat=True)) == [INSTANCE]
