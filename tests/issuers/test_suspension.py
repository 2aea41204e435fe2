"""A suspended organisation's staff keep no rights through it, and do not become citizens."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from issuers import services
from issuers.roles import principal

pytestmark = pytest.mark.django_db


def _suspend(world: Any) -> None:
    services.set_organization_active(organization=world.alpha, is_active=False, actor=world.users["agency_admin"])


def test_staff_of_a_suspended_bank_are_neither_bank_staff_nor_citizens(world: Any) -> None:
    _suspend(world)
    who = principal(world.users["alpha_admin"])
    assert who.bank_ids == []
    assert not who.is_citizen
    assert principal(world.users["citizen1"]).is_citizen  # a real citizen stays one


def test_staff_of_a_suspended_bank_cannot_issue_agent_credentials(world: Any) -> None:
    _suspend(world)
    client = APIClient()
    client.force_authenticate(world.users["alpha_op"])
    response = client.post("/api/v1/agent-credentials/", {"name": "my phone"}, format="json")
    assert response.status_code == 403, response.content
    # Reinstated, the bank's operator is bank staff again (still not a citizen).
    services.set_organization_active(organization=world.alpha, is_active=True, actor=world.users["agency_admin"])
    who = principal(type(world.users["alpha_op"]).objects.get(pk=world.users["alpha_op"].pk))
    assert who.bank_ids == [world.alpha.pk] and not who.is_citizen
