"""Tasks of the cards app: delivering banks' card notices to their webhooks; the holder's e-mail
about a presentation's finished work (sent off the relay's request path)."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="cards.deliver_bank_notice", ignore_result=True)
def deliver_bank_notice(notice_id: int) -> None:
    """POST one bank notice to the bank's webhook (``cards.webhooks.deliver``)."""
    from cards.webhooks import deliver

    deliver(notice_id)


@shared_task(name="cards.email_work_done", ignore_result=True)
def email_work_done(card_id: int, session: str, finished: list[dict[str, Any]]) -> None:
    """E-mail the holder what a presentation did (``cards.holder_emails.work_done``; once per session)."""
    from cards.holder_emails import work_done
    from cards.models import Card

    card = Card.objects.select_related("holder").filter(pk=card_id).first()
    if card is not None:
        work_done(card, session=session, finished=finished)
