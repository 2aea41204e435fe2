"""Secrets generated once per installation, for the embedded default and development only.

With ``DEBUG`` unset (the embedded default: ``make demo``, ``make test`` from a fresh clone) or
``DEBUG=1``, a ``SECRET_KEY`` or ``ECARD_MASTER_KEY`` missing from the environment is read from
``var/secrets.json``, which is created on first use with random values and mode 0600. ``var/`` is
git-ignored and also holds the SQLite database those secrets protect, so nothing secret is in the
repository and no two installations share a key. A production deployment (``DEBUG=0``) never
reaches this module: it refuses to start without its secrets in the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

FILENAME = "secrets.json"


def _generate() -> dict[str, str]:
    return {"SECRET_KEY": secrets.token_urlsafe(50), "ECARD_MASTER_KEY": secrets.token_hex(32)}


def _create(path: Path) -> None:
    """Write a complete file under a temporary name, then link it into place: a concurrent
    process either wins (and everyone reads its values) or finds the finished file."""
    tmp = path.with_name(f".{FILENAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_generate(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(var_dir: Path) -> dict[str, str]:
    """The installation's generated secrets (created on first use)."""
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / FILENAME
    if not path.exists():
        _create(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ImproperlyConfigured(f"{path} must be readable by its owner only (chmod 600 {path})")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImproperlyConfigured(f"{path} is not readable JSON: {type(exc).__name__}") from exc
    if not all(isinstance(values.get(name), str) and values[name] for name in ("SECRET_KEY", "ECARD_MASTER_KEY")):
        raise ImproperlyConfigured(f"{path} lacks SECRET_KEY or ECARD_MASTER_KEY; delete it to start over")
    return values
