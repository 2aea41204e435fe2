"""Signals of the updates app.

``job_state_changed`` is sent (inside the exchange's transaction) whenever the OTA engine moves a
card job to done, failed, or back to pending after a failed attempt. Rollouts listen to it to
update their per-card status.
"""

from __future__ import annotations

from django.dispatch import Signal

# sender: CardJob class; kwargs: job (CardJob), state (str), error (str)
job_state_changed = Signal()
