"""E-mails to card holders (issue 19): work waiting for the card, work done, the card blocked,
unblocked or replaced, nearing expiry or renewed.

One entry point, :func:`email_holder`: it honours the holder's preferences
(:class:`cards.models.NotificationPreferences`, every kind on when absent), sends each event once
(``dedupe_key``, recorded as a :class:`cards.models.CitizenEmail`), and sends only after the
caller's transaction commits, through Django's e-mail backend (the console in the demo, SMTP in
production, the locmem outbox in tests). Never key material, never another person's data.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction

from cards.models import Card, CitizenEmail, NotificationPreferences

logger = logging.getLogger(__name__)

# Which preference switch governs each kind of e-mail.
PREFERENCE_OF: dict[str, str] = {
    CitizenEmail.Kind.WORK_WAITING: "work_waiting",
    CitizenEmail.Kind.WORK_DONE: "work_done",
    CitizenEmail.Kind.CARD_BLOCKED: "card_status",
    CitizenEmail.Kind.CARD_UNBLOCKED: "card_status",
    CitizenEmail.Kind.CARD_REPLACED: "card_status",
    CitizenEmail.Kind.EXPIRY: "expiry",
    CitizenEmail.Kind.RENEWED: "expiry",
}


def wants(user_id: int, kind: str) -> bool:
    """Whether the user wants e-mails of this kind (every kind, until they say otherwise)."""
    preferences = NotificationPreferences.objects.filter(user_id=user_id).first()
    if preferences is None:
        return True
    return bool(getattr(preferences, PREFERENCE_OF[kind]))


def email_holder(card: Card, kind: str, subject: str, body: str, *, dedupe_key: str) -> CitizenEmail | None:
    """E-mail the card's holder about ``card`` once per ``dedupe_key``, if they have an address
    and want this kind. Returns the record, or None when nothing is sent (no holder, no address,
    switched off, already sent)."""
    holder = card.holder
    if holder is None or not holder.email or not wants(holder.pk, kind):
        return None
    try:
        with transaction.atomic():
            record = CitizenEmail.objects.create(
                user=holder, card=card, kind=kind, dedupe_key=dedupe_key[:100], subject=subject[:200]
            )
    except IntegrityError:
        return None  # this event's e-mail went out already
    address = holder.email
    transaction.on_commit(lambda: _send(record.pk, address, subject, body))
    return record


def _send(record_id: int, address: str, subject: str, body: str) -> None:
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [address])
    except OSError:
        logger.warning("citizen e-mail %s could not be sent", record_id)
