"""The bank's fleet actions that are not rollouts (issue 18): the card lists an install campaign
targets (typed or uploaded as CSV), and closing a customer's account — the bank's SSD removed from
the card, the holder told on their card page and by e-mail."""

from __future__ import annotations

import csv
import io
import logging
import re

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import transaction

from audit.services import record_event
from cards import services as card_services
from cards.models import Enrollment, SecurityDomain
from ecard.errors import ServiceError
from issuers.roles import principal
from updates.rollout_models import CardNotice
from updates.rollouts.dispatch import MAX_LISTED_CARDS

logger = logging.getLogger(__name__)

_CIN = re.compile(r"^(?:[0-9A-F]{2}){4,16}$")  # a card image number: 4 to 16 bytes, hex (cards.services)
CSV_COLUMN = "card_number"
MAX_SHOWN_ERRORS = 20
MAX_MESSAGE = 500


def _cin(value: str) -> str | None:
    cleaned = value.strip().replace(" ", "").upper()
    return cleaned if _CIN.match(cleaned) else None


def parse_card_list(text: str) -> list[str]:
    """Card numbers typed one per line or comma-separated; a bad one is named, nothing is taken."""
    items = [p for p in re.split(r"[\s,;]+", text or "") if p]
    bad = [p for p in items if _cin(p) is None]
    if bad:
        shown = ", ".join(repr(p[:40]) for p in bad[:MAX_SHOWN_ERRORS])
        raise ServiceError(f"not card numbers (4 to 16 bytes, hexadecimal): {shown}", field="cins")
    cins = list(dict.fromkeys(c for c in (_cin(p) for p in items) if c))
    if not cins:
        raise ServiceError("the card list is empty", field="cins")
    if len(cins) > MAX_LISTED_CARDS:
        raise ServiceError(f"at most {MAX_LISTED_CARDS} cards", field="cins")
    return cins


def parse_card_csv(text: str) -> list[str]:
    """The ``card_number`` column of a CSV file (header row first). Every bad line is named with its
    line number (header = 1) and reason, and nothing is taken: an empty or malformed number, a
    number repeated, too many lines."""
    reader = csv.reader(io.StringIO(text or ""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ServiceError(f"line 1: not CSV ({exc})", field="csv_file") from None
    columns = [h.strip().lower() for h in header or []]
    if CSV_COLUMN not in columns:
        raise ServiceError(f"line 1: the header has no {CSV_COLUMN} column", field="csv_file")
    where = columns.index(CSV_COLUMN)
    errors: list[str] = []
    seen: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(seen) >= MAX_LISTED_CARDS:
                errors.append(f"line {line}: more than {MAX_LISTED_CARDS} cards")
                break
            raw = row[where] if where < len(row) else ""
            cin = _cin(raw)
            if cin is None:
                errors.append(f"line {line}: {raw.strip()[:40]!r} is not a card number (4 to 16 bytes, hexadecimal)")
            elif cin in seen:
                errors.append(f"line {line}: card {cin} is already on line {seen[cin]}")
            else:
                seen[cin] = line
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: not CSV ({exc})")
    if errors:
        more = f" (and {len(errors) - MAX_SHOWN_ERRORS} more)" if len(errors) > MAX_SHOWN_ERRORS else ""
        raise ServiceError(
            "the CSV file was not used: " + "; ".join(errors[:MAX_SHOWN_ERRORS]) + more, field="csv_file"
        )
    if not seen:
        raise ServiceError("the CSV file lists no card", field="csv_file")
    return list(seen)


@transaction.atomic
def close_account(*, security_domain: SecurityDomain, actor: User, message: str) -> CardNotice | None:
    """The customer closed their account: remove the bank's SSD (with everything in it) from the card
    at its next presentation, and tell the holder — a notice on their card page, and an e-mail when
    they have an address (sent once the removal is committed; a card without holder gets no notice).
    Audited (``enrollment.closed_by_bank``, on the card: the holder reads it in the card's history)."""
    sd = SecurityDomain.objects.select_related("card", "card__holder", "organization").get(pk=security_domain.pk)
    bank = sd.organization
    if not principal(actor).can_operate(bank.pk):
        raise ServiceError(f"only {bank.name}'s operators close its customers' accounts", code="forbidden")
    message = " ".join((message or "").split())[:MAX_MESSAGE]
    if not message:
        raise ServiceError("write a message to the card holder", field="reason")
    enrollment = (
        Enrollment.objects.filter(security_domain=sd, bank=bank, status__in=Enrollment.OPEN_STATUSES)
        .order_by("-pk")
        .first()
    )
    if enrollment is None:
        raise ServiceError("this card has no open enrollment of your bank", code="state")
    card_services.request_removal(enrollment=enrollment, actor=actor)  # refuses a removal already pending
    holder = sd.card.holder
    notice = None
    if holder is not None:
        notice = CardNotice.objects.create(
            card=sd.card,
            holder=holder,
            organization=bank,
            kind=CardNotice.Kind.ACCOUNT_CLOSED,
            message=message,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
    record_event(
        action="enrollment.closed_by_bank",
        subject_type="enrollment",
        subject_id=enrollment.pk,
        card_cin=sd.card.cin,
        actor=actor,
        actor_org=bank,
        organization=bank,
        details={"ssd_aid": sd.aid, "holder_notified": holder is not None, "by_email": bool(holder and holder.email)},
    )
    if notice is not None and holder is not None and holder.email:
        notice_id, address = notice.pk, holder.email
        subject = f"{bank.name} is leaving your card"
        body = (
            f"{bank.name} will remove its security domain, and everything in it, from your card "
            f"{sd.card.cin} the next time the card is presented.\n\n{bank.name} says: {message}\n"
        )
        transaction.on_commit(lambda: _send_notice(notice_id, address, subject, body))
    return notice


def _send_notice(notice_id: int, address: str, subject: str, body: str) -> None:
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [address])
    except OSError:
        logger.warning("card notice %s: the e-mail could not be sent", notice_id)
        return
    CardNotice.objects.filter(pk=notice_id).update(emailed=True)
