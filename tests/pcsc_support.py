"""The vpcd virtual reader for PC/SC tests: pcscd started when it is not running.

Under CI (CI=true) anything missing fails the test; locally a test is skipped only when pcscd is
not installed or pyscard lists no reader at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import pytest


def unavailable(reason: str, *, may_skip: bool) -> None:
    if os.environ.get("CI") == "true" or not may_skip:
        pytest.fail(reason)
    pytest.skip(reason)


def vpcd_reader(name: str, *, tries: int = 40) -> Any:
    """The pyscard reader called ``name`` (e.g. "Virtual PCD 00 00")."""
    if subprocess.run(["pidof", "pcscd"], capture_output=True, check=False).returncode != 0:
        if shutil.which("pcscd") is None:
            unavailable("pcscd is not installed", may_skip=True)
        subprocess.run(["pcscd"], check=False)
        time.sleep(1.0)
    try:
        from smartcard.System import readers
    except ImportError as exc:  # pragma: no cover - pyscard is a dev requirement
        unavailable(f"pyscard not importable: {exc}", may_skip=False)
    found: list[Any] = []
    for _ in range(tries):
        try:
            found = readers()
        except Exception:
            found = []
        if any(str(r) == name for r in found):
            break
        time.sleep(0.25)
    if not found:
        unavailable("pyscard lists no PC/SC reader (pcscd with vsmartcard-vpcd needed)", may_skip=True)
    match = [r for r in found if str(r) == name]
    if not match:
        unavailable(f"reader {name!r} not found among {[str(r) for r in found]}", may_skip=False)
    return match[0]
