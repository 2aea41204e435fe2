"""Signals of the cards app.

``auth_failures_cleared`` is sent (inside the operator's transaction) when an operator clears a
security domain's failed-authentication count, so the relay layer can release the readers it
held for that SD (``updates.models.AuthRefusal``) without ``cards`` importing ``updates``.
"""

from __future__ import annotations

from django.dispatch import Signal

# sender: SecurityDomain class; kwargs: security_domain (SecurityDomain)
auth_failures_cleared = Signal()
