"""The bank is told, before a rollout starts, which cards upgrade in place (GP Amendment H,
data kept) and which take delete-and-reinstall with their personalisation delivered again."""

from __future__ import annotations

import pytest
from django.test import Client

from cards.models import Card
from tests.updates.test_rollouts_e2e import alpha_cap, build_fleet, upload

pytestmark = pytest.mark.django_db


def test_a_rollout_says_how_many_cards_keep_their_data_before_it_starts() -> None:
    fleet = build_fleet(6)
    without = [h.card.pk for h in fleet.holders[:2]]
    Card.objects.filter(pk__in=without).update(elf_upgrade=False)
    release = upload(fleet, alpha_cap((2, 0)), "alpha-2.0.cap").json()
    api = fleet.api(fleet.alpha_op)
    body = api.post(
        "/api/v1/rollouts/",
        {"release": release["id"], "from_version": "1.0", "groups": ["100%"], "require_approval": True},
        format="json",
    ).json()
    assert body["state"] == "awaiting_approval"
    assert body["upgrade_paths"] == {"in_place": 4, "reinstall": 2}

    browser = Client()
    browser.force_login(fleet.alpha_op)
    page = browser.get(f"/bank/alpha/rollouts/{body['id']}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="upgrade-paths"' in text and "2 cards" in text and "delivered again" in text
