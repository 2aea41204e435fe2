"""Events about a card that a bank must hear of (issue 19): the card blocked, unblocked or
replaced, its personalisation requested again, a repair touching the bank's security domain.

:func:`notify_bank` records a :class:`cards.models.BankNotice` (the bank's API and dashboard list
them) and, when the bank configured an active :class:`cards.models.Webhook`, marks it for
delivery after the caller's transaction commits (``cards.tasks.deliver_bank_notice``).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from cards.models import BankNotice, Card, Webhook
from issuers.models import Organization


def notify_bank(
    *, organization: Organization, card: Card, kind: str, message: str, details: dict[str, Any] | None = None
) -> BankNotice:
    """Record a notice for ``organization`` about ``card``; its webhook (if any) is called once
    the caller's transaction commits. ``details`` carries identifiers only (AIDs, ids, CINs)."""
    hooked = Webhook.objects.filter(organization=organization, active=True).exists()
    notice = BankNotice.objects.create(
        organization=organization,
        card=card,
        kind=kind,
        message=message[:500],
        details=details or {},
        delivery=BankNotice.Delivery.PENDING if hooked else BankNotice.Delivery.NONE,
    )
    if hooked:
        notice_id = notice.pk
        transaction.on_commit(lambda: _schedule_delivery(notice_id))
    return notice


def _schedule_delivery(notice_id: int) -> None:
    from cards.tasks import deliver_bank_notice

    deliver_bank_notice.delay(notice_id)
