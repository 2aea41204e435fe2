"""Hostile input to the bank's console pages (issue 18) is a clear 4xx, never a 500, and changes nothing."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from issuers.models import SsdTemplate
from tests.factories import World
from updates.rollout_models import Rollout

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"scp": "3"},
        {"scp": "3", "applet-TOTAL_FORMS": "abc", "applet-INITIAL_FORMS": "0"},
        {"scp": "3", "applet-TOTAL_FORMS": "100000", "applet-INITIAL_FORMS": "0"},
        {"scp": "99", "applet-TOTAL_FORMS": "0", "applet-INITIAL_FORMS": "0"},
        {"scp": "3", "applet-TOTAL_FORMS": "1", "applet-INITIAL_FORMS": "0", "applet-0-release": str(10**30)},
        {"scp": "3", "applet-TOTAL_FORMS": "1", "applet-INITIAL_FORMS": "0", "applet-0-release": "\x00"},
    ],
)
def test_template_form_garbage_is_a_400(world: World, as_user, form) -> None:
    response = as_user("alpha_op").post("/bank/alpha/template/", form)
    assert response.status_code == 400
    assert SsdTemplate.objects.get(organization=world.alpha).default_applets == []


@pytest.mark.parametrize(
    "csv_bytes",
    [b"", b"\xff\xfe\x00garbage", b"card_number\n\x00\x00\n", b"a,b\n1,2\n", b'card_number\n"unclosed\n'],
)
def test_install_form_with_bad_csv_files_is_a_400(world: World, as_user, csv_bytes: bytes) -> None:
    response = as_user("alpha_op").post(
        "/bank/alpha/rollouts/install/",
        {
            "release": "1",
            "instances": World.ALPHA_RID + "0150420101",
            "scope": "csv",
            "groups": "100%",
            "success_threshold": 100,
            "error_threshold": 20,
            "retry_count": 1,
            "csv_file": SimpleUploadedFile("c.csv", csv_bytes),
        },
    )
    assert response.status_code == 400
    assert not Rollout.objects.exists()


@pytest.mark.parametrize(
    "path", ["cards/ZZ/lock/", "cards/{cin2}/lock/", "cards/{cin}/explode/", "releases/999999/revoke/"]
)
def test_unknown_cards_actions_and_releases_are_404(world: World, as_user, path: str) -> None:
    url = "/bank/alpha/" + path.format(cin=world.cards["card1"].cin, cin2=world.cards["card2"].cin)
    assert as_user("alpha_op").post(url, {"confirm": "on"}).status_code == 404
    assert as_user("alpha_op").get("/bank/alpha/cards/%00/").status_code in (400, 404)


def test_api_template_garbage_is_a_400(world: World) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(world.users["alpha_op"])
    url = "/api/v1/organizations/alpha/ssd-template/"
    for body in (
        {"default_applets": "x"},
        {"default_applets": [{"release_id": "x", "instance_aid": "00"}]},
        {"default_applets": [{"release_id": 10**30, "instance_aid": "00"}]},
        {"scp": "x"},
        {"default_applets": [{"release_id": 1, "instance_aid": "A0" * 30}]},
    ):
        assert client.put(url, body, format="json").status_code == 400, body
    assert SsdTemplate.objects.get(organization=world.alpha).default_applets == []
