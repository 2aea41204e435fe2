"""Bank rollout pages over issue 7's services: plan with groups and thresholds, start, pause,
resume, cancel with confirmation, bad input next to the field, other banks get 404."""

from __future__ import annotations

import pytest

from tests.factories import World
from updates.demo_cap import build_cap
from updates.releases import create_release
from updates.rollout_models import Rollout

pytestmark = pytest.mark.django_db


@pytest.fixture
def release(world: World):
    package = world.applets["alpha@card1"].package_aid
    return create_release(
        bank=world.alpha,
        cap_bytes=build_cap(package, [package + "01"], (2, 0), code_size=300),
        filename="wallet-2.0.cap",
        actor=world.users["alpha_op"],
    )


def test_plan_start_pause_resume_cancel(world: World, as_user, release) -> None:
    client = as_user("alpha_op")
    page = client.get("/bank/alpha/rollouts/", {"release": release.pk})
    assert page.status_code == 200 and "Plan a rollout" in page.content.decode()
    response = client.post(
        "/bank/alpha/rollouts/",
        {
            "release": release.pk,
            "groups": "50%, 100%",
            "success_threshold": 100,
            "error_threshold": 20,
            "retry_count": 1,
            "from_version": "1.0",
        },
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    rollout = Rollout.objects.get()
    assert rollout.total == 2 and rollout.group_spec == ["50%", "100%"]
    detail = f"/bank/alpha/rollouts/{rollout.pk}/"
    html = client.get(detail).content.decode()
    assert "0 of 2 cards updated" in html and 'id="group-table"' in html and "Group 1 (up to 50%)" in html
    for action, state in (("start", "running"), ("pause", "paused"), ("resume", "running")):
        assert client.post(detail, {"action": action}).status_code == 302
        rollout.refresh_from_db()
        assert rollout.state == state, action
    live = client.get(detail, {"part": "live"})
    assert live.status_code == 200 and "<html" not in live.content.decode()
    refused = client.post(detail, {"action": "cancel"})
    assert refused.status_code == 400 and 'id="id_confirm_error"' in refused.content.decode()
    rollout.refresh_from_db()
    assert rollout.state == "running"
    assert client.post(detail, {"action": "cancel", "confirm": "on", "reason": "wrong build"}).status_code == 302
    rollout.refresh_from_db()
    assert rollout.state == "cancelled"
    assert client.get(f"{detail}cards/").status_code == 200


def test_bad_rollout_input_is_shown_next_to_the_field(world: World, as_user, release) -> None:
    client = as_user("alpha_op")
    response = client.post(
        "/bank/alpha/rollouts/",
        {
            "release": release.pk,
            "groups": "10%, 50%",
            "success_threshold": 100,
            "error_threshold": 20,
            "retry_count": 1,
        },
    )
    assert response.status_code == 400
    assert 'id="id_groups_error"' in response.content.decode()
    nobody = client.post(
        "/bank/alpha/rollouts/",
        {
            "release": release.pk,
            "groups": "100%",
            "success_threshold": 100,
            "error_threshold": 20,
            "retry_count": 1,
            "from_version": "7.7",
        },
    )
    assert nobody.status_code == 400 and 'id="id_from_version_error"' in nobody.content.decode()
    assert not Rollout.objects.exists()


def test_rollouts_of_another_bank_do_not_exist(world: World, as_user, release) -> None:
    alpha = as_user("alpha_op")
    alpha.post(
        "/bank/alpha/rollouts/",
        {"release": release.pk, "groups": "100%", "success_threshold": 100, "error_threshold": 20, "retry_count": 1},
    )
    rollout = Rollout.objects.get()
    beta = as_user("beta_op")
    for path in (
        "/bank/alpha/rollouts/",
        f"/bank/alpha/rollouts/{rollout.pk}/",
        f"/bank/beta/rollouts/{rollout.pk}/",
        f"/bank/beta/rollouts/{rollout.pk}/cards/",
    ):
        assert beta.get(path).status_code == 404, path
    assert beta.post(f"/bank/beta/rollouts/{rollout.pk}/", {"action": "cancel", "confirm": "on"}).status_code == 404
    # Beta cannot roll out Alpha's release from its own page either.
    response = beta.post(
        "/bank/beta/rollouts/",
        {"release": release.pk, "groups": "100%", "success_threshold": 100, "error_threshold": 20, "retry_count": 1},
    )
    assert response.status_code == 400 and Rollout.objects.count() == 1
    assert as_user("alpha_auditor").post(f"/bank/alpha/rollouts/{rollout.pk}/", {"action": "start"}).status_code == 403
