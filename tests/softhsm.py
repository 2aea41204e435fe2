"""One SoftHSM2 setup per test process, shared by every PKCS#11 test.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, at ``C_Initialize``, so all the tokens a pytest process
uses must live in one token directory: :func:`process_softhsm` makes it (once) and
:func:`new_token` adds a token to it. Without SoftHSM2 the tests are skipped, except under CI
(``CI=true``), where a missing SoftHSM2 is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULE_CANDIDATES = (
    os.environ.get("SOFTHSM2_MODULE", ""),
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
SO_PIN = "12345678"


@dataclass(frozen=True)
class SoftHsm:
    module: str
    token_label: str
    pin: str
    conf: Path


@dataclass(frozen=True)
class ProcessSoftHsm:
    module: str
    util: str
    conf: Path
    tokens: Path


_setup: ProcessSoftHsm | None = None
_lock = threading.Lock()


def missing(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"SoftHSM2 is required under CI: {reason}", pytrace=False)
    pytest.skip(f"SoftHSM2 not available ({reason}); install softhsm2 to run the PKCS#11 tests")


def process_softhsm() -> ProcessSoftHsm:
    """The process's SoftHSM2: a temporary token directory, ``SOFTHSM2_CONF`` pointing at it for
    the rest of the process (skips, or fails under CI, when SoftHSM2 is missing)."""
    global _setup
    with _lock:
        if _setup is not None:
            return _setup
        module = next((m for m in SOFTHSM_MODULE_CANDIDATES if m and Path(m).exists()), "")
        util = shutil.which("softhsm2-util")
        if not module:
            missing("libsofthsm2.so not found")
        if not util:
            missing("softhsm2-util not on PATH")
        try:
            import pkcs11  # noqa: F401
        except ImportError:
            missing("python-pkcs11 is not installed")
        assert util is not None
        base = Path(tempfile.mkdtemp(prefix="softhsm-"))
        tokens = base / "tokens"
        tokens.mkdir()
        conf = base / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        _setup = ProcessSoftHsm(module, util, conf, tokens)
        return _setup


def new_token(label: str, pin: str) -> SoftHsm:
    """A fresh token ``label`` in the process's SoftHSM2."""
    setup = process_softhsm()
    result = subprocess.run(
        [setup.util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", pin],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(f"softhsm2-util --init-token failed: {result.stderr.strip()}", pytrace=False)
    return SoftHsm(module=setup.module, token_label=label, pin=pin, conf=setup.conf)
