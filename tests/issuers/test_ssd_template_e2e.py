"""The default applets a bank sets through its template (issue 18) are what a new enrollment puts on
an emulated card over the air: the stored entries are read by the enrollment engine as they are."""

from __future__ import annotations

import pytest

from cards import services as card_services
from issuers import services as issuer_services
from issuers.models import Organization
from tests.factories import make_user
from tests.updates.test_rollouts_e2e import ALPHA_RID, Holder, build_fleet, card_content
from updates import services as update_services
from updates.demo_cap import build_cap
from updates.releases import create_release

pytestmark = pytest.mark.django_db

TRANSIT_PKG, TRANSIT_APPLET, TRANSIT_INSTANCE = ALPHA_RID + "02", ALPHA_RID + "0201", ALPHA_RID + "020177"


@pytest.fixture(autouse=True)
def _cards_dir(tmp_path, settings):
    settings.ECARD_CARDS_DIR = tmp_path


def test_a_new_enrollment_installs_the_templates_default_applets() -> None:
    fleet = build_fleet(1)
    enrolled = fleet.holders[0]
    before = card_content(enrolled)
    transit = create_release(
        bank=fleet.alpha,
        cap_bytes=build_cap(TRANSIT_PKG, [TRANSIT_APPLET], (1, 0), name="alpha.transit"),
        filename="transit-1.0.cap",
        actor=fleet.alpha_op,
    )
    issuer_services.update_ssd_template(
        organization=fleet.alpha,
        actor=fleet.alpha_op,
        default_applets=[{"release_id": transit.pk, "instance_aid": TRANSIT_INSTANCE, "name": "Transit"}],
    )
    citizen = make_user("newcomer")
    card = card_services.issue_card(agency=fleet.agency, holder=citizen, emulated=True)
    _credential, token = update_services.issue_agent_credential(user=citizen, name="reader")
    alpha = Organization.objects.get(pk=fleet.alpha.pk)
    consent = card_services.consent_text_for(card, alpha)
    assert "Transit" in consent
    card_services.request_enrollment(card=card, bank=alpha, citizen=citizen, consent_text=consent, accepted=True)
    holder = Holder(citizen, card, token)
    result = holder.present()
    assert result.ok and result.pending == 0, result
    content = card_content(holder)
    assert TRANSIT_INSTANCE in content and content[TRANSIT_PKG][1] == "1.0"
    assert enrolled.present().ok
    assert card_content(enrolled) == before  # the card enrolled before the change is untouched
