"""Tasks of the cards app: delivering banks' card notices to their webhooks."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(bind=True, name="cards.deliver_bank_notice", ignore_result=True, max_retries=8)
def deliver_bank_notice(self: Any, notice_id: int) -> None:
    """POST one bank notice to the bank's webhook (``cards.webhooks.deliver``), again with backoff
    while it fails, at most ``cards.webhooks.MAX_ATTEMPTS`` attempts in all. Without a worker (eager
    tasks: the demo, tests) the attempts follow each other at once."""
    from cards.webhooks import deliver

    retry_in = deliver(notice_id)
    while retry_in is not None and self.request.is_eager:
        retry_in = deliver(notice_id)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
