"""End to end (issue 19): a real card issued from a manufacturer's personalisation file enrolls a
bank over PC/SC. The card in the reader is ``cardsim init --manufacturer-file --line`` served
through vsmartcard's vpcd and pcscd; ``python -m agent`` relays for the platform (``live_server``),
which knows the card only from the imported file: its ISD opens with the card's stored keys, its
receipts verify with the file's receipt key, and the bank's SSD ends with the bank's keys.

Under CI (CI=true) a missing pcscd/vpcd/reader fails; locally the test is skipped only when
pyscard lists no reader at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cards import services as card_services
from cards.models import Enrollment, SecurityDomain
from issuers import custody
from tests.agent.test_e2e_pcsc import open_scp03, reader, registry, run_agent, serve  # noqa: F401 - fixtures
from tests.manufacturer_kit import real_card
from tests.otakit import build_ota_world
from tests.shared_data import cap_file
from updates.ota import BANK_KVN, keyset_for

pytestmark = [pytest.mark.pcsc, pytest.mark.django_db(transaction=True)]

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
INSTANCE = "0102030405060708"


def test_a_card_from_one_line_of_a_manufacturer_file_enrolls_a_bank_over_pcsc(
    live_server,
    settings,
    tmp_path: Path,
    serve,  # noqa: F811 - the fixture imported above
) -> None:
    settings.ECARD_CARDS_DIR = tmp_path / "cards"
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    real = real_card(world.agency, tmp_path)
    assert not real.card.emulated and real.card.key_scheme == "stored" and real.card.manufacturer_batch_id
    enrollment = card_services.request_enrollment(
        card=real.card,
        bank=world.bank,
        citizen=real.holder,
        consent_text=card_services.consent_text_for(real.card, world.bank),
        accepted=True,
    )
    served = serve(real.state)

    result = run_agent(live_server.url, real.token, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done    Enroll bank" in result.stderr
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.ACTIVE
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    assert sd.state == SecurityDomain.State.ACTIVE and sd.key_kvn == BANK_KVN[3]
    real.card.refresh_from_db()
    assert real.card.receipt_counter > 0

    conn = served.connect()
    try:
        bank_keys = custody.load_static_keys(keyset_for(world.bank, real.card, sd.aid, BANK_KVN[3]))
        channel = open_scp03(conn, sd.aid, bank_keys)  # read back through the reader, with the bank's keys
        assert INSTANCE in registry(conn, channel, 0x40)
        assert release.package_aid in registry(conn, channel, 0x20)
    finally:
        conn.close()
    assert served.stop() == 0
