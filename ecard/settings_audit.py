"""Audit log settings (imported at the end of :mod:`ecard.settings`).

``ECARD_LOG_ORIGIN``        the log's origin line in checkpoints, also the signing key's name
                            (default ``ecard.example/audit-log``).
``ECARD_LOG_OPERATOR``      slug of the agency organisation that runs the log and owns its key
                            (default: the first active agency).
``ECARD_AUDIT_CHECKPOINT_SECONDS``  how often Celery beat signs a checkpoint (default 300).
``ECARD_AUDIT_EXPORT_CHECKPOINTS``  at most this many earlier checkpoints (with consistency proofs)
                            in an export header (default 256, spread over the log's history).
``ECARD_AUDIT_SEQUENCE_SECONDS``    how often Celery beat runs the sequencer, which gives committed
                            pending entries their indices (default 1).
``ECARD_AUDIT_SEQUENCE_BATCH``      entries per sequencing transaction (default 1000).
``ECARD_AUDIT_SEQUENCE_ON_COMMIT``  try (without waiting) to sequence right after each appending
                            transaction commits (default on; off leaves it to beat and to reads).
``ECARD_AUDIT_SEQUENCE_ON_COMMIT_INTERVAL``  at most one such run per process per this many seconds
                            (default: 0 on SQLite, 0.05 on PostgreSQL).
``ECARD_AUDIT_READ_SEQUENCE_MAX``   reads of the log sequence at most this many pending entries
                            first (default 10000).
``ECARD_WITNESSES``         the witnesses every new checkpoint is sent to (c2sp.org/tlog-witness):
                            JSON, a list of ``[name, url, vkey]`` (or objects with those members);
                            ``url`` is the witness's submission prefix (``…/add-checkpoint`` is
                            appended), ``vkey`` its cosigner key (type 0x04). Default: none.
``ECARD_WITNESS_TIMEOUT``   seconds per request to a witness (default 10).
``ECARD_WITNESS_RETRIES``   retries of a push while a witness is unreachable (default 8, backing
                            off up to 5 minutes; with a broker only — in-process, beat and the next
                            checkpoint retry).
``ECARD_AUDIT_WITNESS_SECONDS``  how often beat sends the latest checkpoint to witnesses that have
                            not cosigned it yet (default 60).
"""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured

ECARD_LOG_ORIGIN = os.environ.get("ECARD_LOG_ORIGIN", "ecard.example/audit-log")
ECARD_LOG_OPERATOR = os.environ.get("ECARD_LOG_OPERATOR", "")
ECARD_AUDIT_CHECKPOINT_SECONDS = float(os.environ.get("ECARD_AUDIT_CHECKPOINT_SECONDS", "300"))
ECARD_AUDIT_EXPORT_CHECKPOINTS = int(os.environ.get("ECARD_AUDIT_EXPORT_CHECKPOINTS", "256"))
ECARD_AUDIT_SEQUENCE_SECONDS = float(os.environ.get("ECARD_AUDIT_SEQUENCE_SECONDS", "1"))
ECARD_AUDIT_SEQUENCE_BATCH = int(os.environ.get("ECARD_AUDIT_SEQUENCE_BATCH", "1000"))
ECARD_AUDIT_SEQUENCE_ON_COMMIT = os.environ.get("ECARD_AUDIT_SEQUENCE_ON_COMMIT", "1") not in ("0", "false", "no")
_interval = os.environ.get("ECARD_AUDIT_SEQUENCE_ON_COMMIT_INTERVAL", "")
ECARD_AUDIT_SEQUENCE_ON_COMMIT_INTERVAL = float(_interval) if _interval else None
ECARD_AUDIT_READ_SEQUENCE_MAX = int(os.environ.get("ECARD_AUDIT_READ_SEQUENCE_MAX", "10000"))

# Security event log (audit/security.py): bounds per minute and retention.
ECARD_SECURITY_EVENT_ROWS_PER_SOURCE = int(os.environ.get("ECARD_SECURITY_EVENT_ROWS_PER_SOURCE", "30"))
ECARD_SECURITY_EVENT_ROWS_PER_MINUTE = int(os.environ.get("ECARD_SECURITY_EVENT_ROWS_PER_MINUTE", "1000"))
ECARD_SECURITY_EVENT_WRITES_PER_SOURCE = int(os.environ.get("ECARD_SECURITY_EVENT_WRITES_PER_SOURCE", "600"))
ECARD_SECURITY_EVENT_RETENTION_DAYS = int(os.environ.get("ECARD_SECURITY_EVENT_RETENTION_DAYS", "90"))


def _witnesses(raw: str) -> list[tuple[str, str, str]]:
    if not raw.strip():
        return []
    try:
        items = json.loads(raw)
        out = []
        for item in items:
            name, url, vkey = (item["name"], item["url"], item["vkey"]) if isinstance(item, dict) else item
            if not all(isinstance(v, str) and v for v in (name, url, vkey)):
                raise ValueError("name, url and vkey must be non-empty strings")
            out.append((name, url, vkey))
    except (ValueError, TypeError, KeyError) as exc:
        raise ImproperlyConfigured(f"ECARD_WITNESSES must be a JSON list of [name, url, vkey]: {exc}") from None
    return out


ECARD_WITNESSES = _witnesses(os.environ.get("ECARD_WITNESSES", ""))
ECARD_WITNESS_TIMEOUT = float(os.environ.get("ECARD_WITNESS_TIMEOUT", "10"))
ECARD_WITNESS_RETRIES = int(os.environ.get("ECARD_WITNESS_RETRIES", "8"))
ECARD_AUDIT_WITNESS_SECONDS = float(os.environ.get("ECARD_AUDIT_WITNESS_SECONDS", "60"))

CELERY_BEAT_SCHEDULE = {
    "audit-security-event-purge": {
        "task": "audit.tasks.purge_security_events",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    "audit-checkpoint": {
        "task": "audit.tasks.make_checkpoint",
        "schedule": ECARD_AUDIT_CHECKPOINT_SECONDS,
        # A missed run is simply superseded by the next one.
        "options": {"expires": ECARD_AUDIT_CHECKPOINT_SECONDS},
    },
    "audit-sequence": {
        "task": "audit.tasks.sequence",
        "schedule": ECARD_AUDIT_SEQUENCE_SECONDS,
        "options": {"expires": ECARD_AUDIT_SEQUENCE_SECONDS},
    },
    "audit-witness": {
        "task": "audit.tasks.push_checkpoint",
        "schedule": ECARD_AUDIT_WITNESS_SECONDS,
        "options": {"expires": ECARD_AUDIT_WITNESS_SECONDS},
    },
}
