"""``python manage.py agent_token USERNAME [--name DEVICE]``."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from tests.factories import make_user
from tests.otakit import build_ota_world
from updates import services
from updates.models import AgentCredential

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _cards_dir(tmp_path, settings):
    settings.ECARD_CARDS_DIR = tmp_path


def test_prints_a_working_token_for_a_card_holder() -> None:
    world = build_ota_world()
    out, err = io.StringIO(), io.StringIO()
    call_command("agent_token", "citizen1", "--name", "kitchen laptop", stdout=out, stderr=err)
    token = out.getvalue().strip()
    credential = services.authenticate_agent(token)
    assert credential is not None and credential.user == world.citizen and credential.name == "kitchen laptop"
    assert token not in err.getvalue() and credential.key_id in err.getvalue()
    assert AgentCredential.objects.filter(user=world.citizen).count() == 2  # the world's own and this one


def test_refuses_unknown_users_and_users_without_a_card() -> None:
    build_ota_world()
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("agent_token", "nobody", stdout=io.StringIO())
    make_user("clerk")
    with pytest.raises(CommandError, match="card holders"):
        call_command("agent_token", "clerk", stdout=io.StringIO())
    with pytest.raises(CommandError, match="card holders"):
        call_command("agent_token", "alpha_op", stdout=io.StringIO())
