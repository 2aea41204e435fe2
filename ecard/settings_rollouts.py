"""Rollout settings (imported at the end of :mod:`ecard.settings`, after the audit settings).

``ECARD_ROLLOUT_TICK_SECONDS``  how often Celery beat evaluates running rollouts: start times,
                                due retries, group advancement, error thresholds (default 30).
``ECARD_EXPIRY_WARNING_SECONDS``  how often holders of cards nearing expiry are warned by e-mail
                                (once per card and expiry date whatever the period; default a day).
"""

from __future__ import annotations

import os

from ecard.settings_audit import CELERY_BEAT_SCHEDULE as _beat

ECARD_ROLLOUT_TICK_SECONDS = float(os.environ.get("ECARD_ROLLOUT_TICK_SECONDS", "30"))
ECARD_EXPIRY_WARNING_SECONDS = float(os.environ.get("ECARD_EXPIRY_WARNING_SECONDS", "86400"))

CELERY_BEAT_SCHEDULE = {
    **_beat,
    "rollouts-tick": {
        "task": "updates.rollouts_tick",
        "schedule": ECARD_ROLLOUT_TICK_SECONDS,
        # A missed run is superseded by the next one; the evaluation is idempotent.
        "options": {"expires": ECARD_ROLLOUT_TICK_SECONDS},
    },
    "warn-cards-nearing-expiry": {  # issue 19: cards.validity.warn_nearing_expiry
        "task": "updates.warn_cards_nearing_expiry",
        "schedule": ECARD_EXPIRY_WARNING_SECONDS,
        "options": {"expires": ECARD_EXPIRY_WARNING_SECONDS},
    },
}
