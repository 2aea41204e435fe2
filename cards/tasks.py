"""Tasks of the cards app: delivering banks' card notices to their webhooks."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="cards.deliver_bank_notice", ignore_result=True)
def deliver_bank_notice(notice_id: int) -> None:
    """POST one bank notice to the bank's webhook (``cards.webhooks.deliver``)."""
    from cards.webhooks import deliver

    deliver(notice_id)
