"""Validity and renewal pages (issue 19): the agency sets its validity policy and plans, starts
and follows a renewal campaign; a citizen sees their card's expiry and renews it when it nears
expiry (or has expired). Bad input is a form error; read-only roles and other users are refused."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from audit.models import AuditEntry
from cards import validity
from cards.models import Card, CardJob
from tests.factories import World
from updates.rollout_models import Rollout

pytestmark = pytest.mark.django_db


def login(world: World, username: str) -> Client:
    client = Client()
    client.force_login(world.users[username])
    return client


def test_the_agency_sets_its_policy_and_runs_a_renewal_campaign(world: World) -> None:
    client = login(world, "agency_op")
    page = client.get("/agency/renewals/")
    assert page.status_code == 200 and "Renew the cards nearing expiry" in page.content.decode()
    bad = client.post("/agency/renewals/", {"form": "policy", "years": "0", "renew_within_days": "30"})
    assert bad.status_code == 400 and 'id="id_years_error"' in bad.content.decode()
    saved = client.post("/agency/renewals/", {"form": "policy", "years": "4", "renew_within_days": "30"})
    assert saved.status_code == 302 and validity.policy_of(world.agency).years == 4
    assert AuditEntry.objects.filter(action="validity_policy.set").exists()

    nothing_due = client.post(
        "/agency/renewals/",
        {
            "form": "campaign",
            "groups": "100%",
            "success_threshold": 100,
            "error_threshold": 20,
            "retry_count": 1,
            "confirm": "on",
        },
    )
    assert nothing_due.status_code == 400 and "expires by" in nothing_due.content.decode()
    Card.objects.filter(pk=world.cards["card1"].pk).update(valid_until=validity.today() + dt.timedelta(days=3))
    planned = client.post(
        "/agency/renewals/",
        {
            "form": "campaign",
            "groups": "100%",
            "success_threshold": 100,
            "error_threshold": 20,
            "retry_count": 1,
            "confirm": "on",
        },
    )
    assert planned.status_code == 302
    rollout = Rollout.objects.get(target_kind=Rollout.Target.RENEW)
    assert rollout.total == 1 and planned["Location"] == f"/agency/renewals/{rollout.pk}/"
    started = client.post(planned["Location"], {"action": "start"})
    assert started.status_code == 302
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.RUNNING
    assert CardJob.objects.filter(card=world.cards["card1"], kind=CardJob.Kind.RENEW_CARD).count() == 1
    detail = client.get(planned["Location"])
    assert detail.status_code == 200 and "Progress per group" in detail.content.decode()
    # a bank's user does not see these pages
    assert login(world, "alpha_op").get("/agency/renewals/").status_code == 403


def test_a_citizen_sees_the_expiry_and_renews_near_it(world: World) -> None:
    card = world.cards["card1"]
    client = login(world, "citizen1")
    page = client.get(f"/card/{card.cin}/").content.decode()
    assert f"Valid until <strong>{card.valid_until.isoformat()}</strong>" in page
    assert "Renew my card" not in page  # years ahead of its expiry
    early = client.post(f"/card/{card.cin}/renew/")
    assert early.status_code == 302 and not CardJob.objects.filter(kind=CardJob.Kind.RENEW_CARD).exists()

    Card.objects.filter(pk=card.pk).update(valid_until=validity.today() - dt.timedelta(days=2))
    page = client.get(f"/card/{card.cin}/").content.decode()
    assert "Expired on" in page and "Renew my card" in page
    assert login(world, "citizen2").post(f"/card/{card.cin}/renew/").status_code == 404  # not theirs
    renewed = client.post(f"/card/{card.cin}/renew/")
    assert renewed.status_code == 302
    job = CardJob.objects.get(card=card, kind=CardJob.Kind.RENEW_CARD)
    assert job.params["valid_until"] == validity.add_years(validity.today(), 5).isoformat()
    page = client.get(f"/card/{card.cin}/").content.decode()
    assert "A renewal is pending" in page and "Renew my card" not in page
