"""Signals of the cards app.

``auth_failures_cleared`` is sent (inside the operator's transaction) when an operator clears a
security domain's failed-authentication count, so the relay layer can release the readers it
held for that SD (``updates.models.AuthRefusal``) without ``cards`` importing ``updates``.

``job_queued`` is sent (inside the requester's transaction) when a card job is queued. ``updates``,
the app that runs jobs, schedules the job's preparation from it (``updates.receivers``): ``cards``
sits below ``updates`` and does not import it (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

from django.dispatch import Signal

# sender: SecurityDomain class; kwargs: security_domain (SecurityDomain)
auth_failures_cleared = Signal()

# sender: CardJob class; kwargs: job (CardJob)
job_queued = Signal()

# sender: CardJob class; kwargs: jobs (list[CardJob], already CANCELLED), reason (str). Sent inside
# the transaction that cancelled them in bulk (a card replaced): rollouts and repairs count them.
jobs_cancelled = Signal()
