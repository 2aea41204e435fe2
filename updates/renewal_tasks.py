"""Celery task of renewals (issue 19): the daily warning to holders of cards nearing expiry."""

from __future__ import annotations

from celery import shared_task

from cards import validity


@shared_task(name="updates.warn_cards_nearing_expiry", acks_late=True)
def warn_cards_nearing_expiry() -> int:
    """E-mail each holder whose card nears its expiry, once per card and expiry date (idempotent)."""
    return validity.warn_nearing_expiry()
