"""An install campaign and a key rotation campaign end to end (issue 18): emulated cards presented
through the in-process agent and the relay API get a second Alpha package installed (the card
lacked it), and then new Alpha keys, wave by wave; Beta's content is untouched."""

from __future__ import annotations

import pytest

from cards import services as card_services
from cards.models import AppletInstance, CardPackage, SecurityDomain
from tests.updates.test_rollouts_e2e import ALPHA_RID, BETA_INSTANCE, BETA_PKG, build_fleet, card_content
from updates import rollouts
from updates.demo_cap import build_cap
from updates.models import Rollout, RolloutTarget
from updates.releases import create_release

pytestmark = pytest.mark.django_db

TRANSIT_PKG, TRANSIT_APPLET, TRANSIT_INSTANCE = ALPHA_RID + "02", ALPHA_RID + "0201", ALPHA_RID + "020101"


def test_install_campaign_then_key_rotation_over_the_air() -> None:
    fleet = build_fleet(4)
    transit = create_release(
        bank=fleet.alpha,
        cap_bytes=build_cap(TRANSIT_PKG, [TRANSIT_APPLET], (1, 0), name="alpha.transit"),
        filename="transit-1.0.cap",
        actor=fleet.alpha_op,
    )
    campaign = rollouts.create_install_rollout(
        bank=fleet.alpha,
        release=transit,
        actor=fleet.alpha_op,
        instances=[{"instance_aid": TRANSIT_INSTANCE}],
        groups=["50%", "100%"],
    )
    assert campaign.total == 4
    rollouts.start_rollout(rollout=campaign, actor=fleet.alpha_op)
    first = set(RolloutTarget.objects.filter(rollout=campaign, group__index=1).values_list("card_id", flat=True))
    assert len(first) == 2
    # the second wave's cards have no work yet (presented first: once the first wave is done, the
    # second wave starts at once)
    for holder in sorted(fleet.holders, key=lambda h: h.card.pk in first):
        result = holder.present()
        assert result.ok, result
        content = card_content(holder)
        assert (TRANSIT_INSTANCE in content) == (holder.card.pk in first)
    for holder in fleet.holders:
        assert holder.present().ok
        content = card_content(holder)
        assert TRANSIT_INSTANCE in content and content[TRANSIT_PKG][1] == "1.0"
        assert BETA_PKG in content and BETA_INSTANCE in content
    campaign.refresh_from_db()
    assert campaign.state == Rollout.State.COMPLETED
    assert AppletInstance.objects.filter(instance_aid=TRANSIT_INSTANCE, package_version="1.0").count() == 4
    assert CardPackage.objects.filter(package_aid=TRANSIT_PKG).count() == 4

    before = dict(SecurityDomain.objects.filter(organization=fleet.alpha).values_list("pk", "key_kvn"))
    beta_before = dict(SecurityDomain.objects.filter(organization=fleet.beta).values_list("pk", "key_kvn"))
    rotation = rollouts.create_rotation_rollout(bank=fleet.alpha, actor=fleet.alpha_op, groups=["100%"])
    assert rotation.total == 4
    rollouts.start_rollout(rollout=rotation, actor=fleet.alpha_op)
    for holder in fleet.holders:
        assert holder.present().ok
    rotation.refresh_from_db()
    assert rotation.state == Rollout.State.COMPLETED
    after = dict(SecurityDomain.objects.filter(organization=fleet.alpha).values_list("pk", "key_kvn"))
    assert after == {pk: kvn + 1 for pk, kvn in before.items()}
    assert dict(SecurityDomain.objects.filter(organization=fleet.beta).values_list("pk", "key_kvn")) == beta_before
    # the card took the new keys: a channel opened with them rotates once more
    holder = fleet.holders[0]
    sd = SecurityDomain.objects.get(card=holder.card, organization=fleet.alpha)
    job = card_services.request_key_rotation(security_domain=sd, actor=fleet.alpha_op)
    assert holder.present().ok
    job.refresh_from_db()
    assert job.state == "done", job.last_error
    sd.refresh_from_db()
    assert sd.key_kvn == before[sd.pk] + 2
