from __future__ import annotations

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from issuers.management.commands.seed_demo import DEMO_PASSWORD, DEMO_USERS

pytestmark = pytest.mark.django_db


def test_seed_demo_is_idempotent_and_users_can_log_in() -> None:
    call_command("seed_demo")
    call_command("seed_demo")
    assert get_user_model().objects.filter(username__in=DEMO_USERS).count() == len(DEMO_USERS)
    for username in DEMO_USERS:
        assert authenticate(username=username, password=DEMO_PASSWORD) is not None
