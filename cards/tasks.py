"""Tasks of the cards app: delivering banks' card notices to their webhooks; the holder's e-mail
about a presentation's finished work (sent off the relay's request path)."""

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


@shared_task(name="cards.email_work_done", ignore_result=True)
def email_work_done(card_id: int, session: str, finished: list[dict[str, Any]]) -> None:
    """E-mail the holder what a presentation did (``cards.holder_emails.work_done``; once per session)."""
    from cards.holder_emails import work_done
    from cards.models import Card

    card = Card.objects.select_related("holder").filter(pk=card_id).first()
    if card is not None:
        work_done(card, session=session, finished=finished)
