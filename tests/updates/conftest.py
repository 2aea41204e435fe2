"""Fixtures of the updates tests: every test's emulated cards live in its own temporary folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cards_dir(tmp_path, settings):
    settings.ECARD_CARDS_DIR = tmp_path
