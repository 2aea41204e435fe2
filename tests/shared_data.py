"""Locate the read-only project material in ``../shared`` (vectors, CAP files).

Tests read it in place. Where it is absent (a clone elsewhere) they skip with a
reason; under CI (``ECARD_REQUIRE_SHARED=1``, set by ``.ci/run``) absence fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("ECARD_SHARED_DIR", PROJECT_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path of a file under ``../shared``; skip (or fail under CI) when it is missing."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        reason = f"shared test material not found: {path}"
        if os.environ.get("ECARD_REQUIRE_SHARED") == "1":
            pytest.fail(reason + " (ECARD_REQUIRE_SHARED=1)")
        pytest.skip(reason)
    return path


def gp_vectors() -> dict[str, Any]:
    """The published GlobalPlatform known-answer vectors."""
    return json.loads(shared_path("testdata", "vectors", "gp-vectors.json").read_text())


def cap_file(name: str) -> Path:
    """One of the real CAP files in ``../shared/testdata/cap/``."""
    return shared_path("testdata", "cap", name)
