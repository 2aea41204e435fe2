"""Audit log settings (imported at the end of :mod:`ecard.settings`).

``ECARD_LOG_ORIGIN``        the log's origin line in checkpoints, also the signing key's name
                            (default ``ecard.example/audit-log``).
``ECARD_LOG_OPERATOR``      slug of the agency organisation that runs the log and owns its key
                            (default: the first active agency).
``ECARD_AUDIT_CHECKPOINT_SECONDS``  how often Celery beat signs a checkpoint (default 300).
``ECARD_AUDIT_EXPORT_CHECKPOINTS``  at most this many earlier checkpoints (with consistency proofs)
                            in an export header (default 256, spread over the log's history).
"""

from __future__ import annotations

import os

ECARD_LOG_ORIGIN = os.environ.get("ECARD_LOG_ORIGIN", "ecard.example/audit-log")
ECARD_LOG_OPERATOR = os.environ.get("ECARD_LOG_OPERATOR", "")
ECARD_AUDIT_CHECKPOINT_SECONDS = float(os.environ.get("ECARD_AUDIT_CHECKPOINT_SECONDS", "300"))
ECARD_AUDIT_EXPORT_CHECKPOINTS = int(os.environ.get("ECARD_AUDIT_EXPORT_CHECKPOINTS", "256"))

CELERY_BEAT_SCHEDULE = {
    "audit-checkpoint": {
        "task": "audit.tasks.make_checkpoint",
        "schedule": ECARD_AUDIT_CHECKPOINT_SECONDS,
        # A missed run is simply superseded by the next one.
        "options": {"expires": ECARD_AUDIT_CHECKPOINT_SECONDS},
    },
}
