"""Portal test fixtures: a platform world and logged-in clients; the login throttle starts empty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.test import Client

from tests.factories import World
from tests.portal.browser import chromium, visit  # noqa: F401 - fixtures of the browser tests


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def as_user(world: World):
    def make(username: str) -> Client:
        client = Client(raise_request_exception=True)
        client.force_login(world.users[username])
        return client

    return make
