"""The bank dashboard's pictures (issue 18): installed versions over time per package, replayed from
completed card jobs, and the progress of each campaign by wave; both rendered as server-side SVG
with their numbers in the SVG's description and in a table."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from cards.models import CardJob
from portal import charts
from tests.factories import World
from updates import rollouts
from updates.demo_cap import build_cap
from updates.releases import create_release
from updates.rollout_selectors import version_history

pytestmark = pytest.mark.django_db

PACKAGE = World.ALPHA_RID + "015042"


def release(world: World, version: tuple[int, int]):
    return create_release(
        bank=world.alpha,
        cap_bytes=build_cap(PACKAGE, [PACKAGE + "01"], version),
        filename=f"t{version[0]}.cap",
        actor=world.users["alpha_op"],
    )


def done(world: World, card: str, kind: str, params: dict, when: dt.datetime) -> None:
    CardJob.objects.create(
        card=world.cards[card],
        kind=kind,
        organization=world.alpha,
        security_domain=world.sds[f"alpha@{card}"],
        params=params,
        state=CardJob.State.DONE,
        finished_at=when,
    )


@pytest.fixture
def history_world(world: World):
    v1, v2 = release(world, (1, 0)), release(world, (2, 0))
    today = timezone.now().date()
    noon = dt.datetime.combine(today, dt.time(12), tzinfo=dt.UTC)
    CardJob.objects.all().delete()  # the factory's enrollment jobs carried no applet
    done(
        world,
        "card1",
        "enroll_bank",
        {"default_applets": [{"release": v1.pk, "instance_aid": "X"}]},
        noon - dt.timedelta(days=40),
    )
    done(
        world,
        "card3",
        "update_applet",
        {"packages": [{"release": v1.pk, "instances": []}]},
        noon - dt.timedelta(days=2),
    )
    done(
        world,
        "card1",
        "update_applet",
        {"packages": [{"release": v2.pk, "instances": []}]},
        noon - dt.timedelta(days=1),
    )
    done(world, "card3", "remove_bank", {}, noon)
    return world, today


def test_versions_over_time_are_replayed_from_completed_jobs(history_world) -> None:
    world, today = history_world
    history = version_history(world.alpha.pk, days=4, today=today)
    assert history["days"] == [today - dt.timedelta(days=n) for n in (3, 2, 1, 0)]
    assert history["packages"] == {PACKAGE: {"1.0": [1, 2, 1, 0], "2.0": [0, 0, 1, 1]}}
    assert version_history(world.beta.pk, days=4, today=today)["packages"] == {}


def test_line_chart_geometry() -> None:
    chart = charts.line_chart(["d1", "d2", "d3"], {"1.0": [0, 2, 4], "2.0": [4, 2, 0]})
    first, second = chart["lines"]
    assert first.label == "v1.0" and first.last == 4 and first.peak == 4 and second.last == 0
    points = [tuple(map(int, p.split(","))) for p in first.points.split()]
    assert [x for x, _ in points] == [charts.LINE_LEFT, charts.LINE_LEFT + 165, charts.LINE_LEFT + 330]
    assert points[0][1] == chart["bottom"] and points[2][1] == chart["top"]  # 0 at the axis, 4 at the top
    assert chart["rows"][1] == {"day": "d2", "values": [2, 2]}


def test_dashboard_draws_versions_over_time_and_campaigns_by_wave(history_world) -> None:
    world, _today = history_world
    campaign = rollouts.create_install_rollout(
        bank=world.alpha,
        release=world.alpha.releases.get(package_version="2.0"),
        actor=world.users["alpha_op"],
        instances=[{"instance_aid": PACKAGE + "0101"}],
        groups=["50%", "100%"],
        cins=[world.cards["card3"].cin],
    )
    client = Client()
    client.force_login(world.users["alpha_auditor"])
    html = client.get("/bank/alpha/").content.decode()
    assert f'<h3 class="mono">{PACKAGE}</h3>' in html
    assert 'class="line line-0"' in html and "v1.0: 0 cards on" in html and "v2.0: 1 cards on" in html
    assert f'id="campaign-{campaign.pk}-title">Cards of rollout {campaign.pk} per wave and outcome' in html
    assert "Group 1 (up to 50%): waiting, 1 card: 1 pending" in html
    other = Client()
    other.force_login(world.users["beta_op"])
    beta_html = other.get("/bank/beta/").content.decode()
    assert PACKAGE not in beta_html and f"campaign-{campaign.pk}" not in beta_html
