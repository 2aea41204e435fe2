"""E-mails about work on a holder's card (issue 19), and the holder's e-mail preferences.

* :func:`work_waiting`: a job was queued for the card; once per batch of waiting work (the
  de-duplication key names the card's first open job, so jobs queued before the card is next
  presented add no e-mail).
* :func:`work_done`: a presentation finished work on the card; once per session, at its end.
* :func:`set_preferences`: the four switches of the account page (:class:`NotificationPreferences`).

Sending goes through :func:`cards.notify.email_holder` (preferences, once per key, after commit).
The e-mails say what happens in words, never keys or AIDs of other people's cards.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from audit.services import record_event
from cards.models import Card, CardJob, CitizenEmail, NotificationPreferences
from cards.notify import email_holder

SWITCHES = ("work_waiting", "work_done", "card_status", "expiry")

# What a job does, in words, for the holder's e-mails ("{bank}" is the organisation whose work it is).
JOB_WORDS: dict[str, str] = {
    CardJob.Kind.ENROLL_BANK: "add {bank} to your card",
    CardJob.Kind.REMOVE_BANK: "remove {bank} from your card",
    CardJob.Kind.ROTATE_KEYS: "renew {bank}'s keys on your card",
    CardJob.Kind.LOCK_SD: "lock {bank} on your card",
    CardJob.Kind.UNLOCK_SD: "unlock {bank} on your card",
    CardJob.Kind.UPDATE_APPLET: "update {bank}'s applications on your card",
    CardJob.Kind.PERSONALIZE: "deliver {bank}'s data to your card",
    CardJob.Kind.CARD_STATUS: "change your card's status",
    CardJob.Kind.RENEW_CARD: "renew your card",
    CardJob.Kind.SURVEY_CARD: "check your card's content (a repair by {bank})",
    CardJob.Kind.REPAIR_ISD: "remove unknown content from your card (a repair by {bank})",
}
SIGN_OFF = (
    "\n\nYou can choose which e-mails you receive on your account page (E-mail preferences).\n— The E-Card platform"
)


def job_in_words(kind: str, bank: str) -> str:
    return JOB_WORDS.get(kind, "work on your card").format(bank=bank or "the agency")


def work_waiting(job: CardJob) -> CitizenEmail | None:
    """E-mail the holder that work waits for their card (inside the transaction that queued it)."""
    card = job.card
    if card.holder_id is None or card.standing != Card.Standing.ACTIVE or card.lifecycle == Card.Lifecycle.TERMINATED:
        return None  # nobody to tell, or a blocked or ended card that nobody should present
    if card.holder is None or not card.holder.email:
        return None  # no address (email_holder says the same): the queue is not read for nothing
    first = (
        CardJob.objects.filter(card_id=card.pk, state__in=CardJob.OPEN_STATES)
        .order_by("created_at", "id")
        .values_list("pk", flat=True)
        .first()
    )
    what = job_in_words(job.kind, job.organization.name)
    body = (
        f"Work waits for your card {card.serial}: {what}.\n\n"
        "It runs the next time you present your card: with your reader or phone (Connect your card "
        "in the portal), or at a terminal of your bank." + SIGN_OFF
    )
    return email_holder(
        card,
        CitizenEmail.Kind.WORK_WAITING,
        "Work waits for your card",
        body,
        dedupe_key=f"work_waiting:{card.pk}:{first or job.pk}",
    )


def work_done(card: Card, *, session: str, finished: Iterable[dict[str, Any]]) -> CitizenEmail | None:
    """E-mail the holder what a presentation did (once per session): ``finished`` is the session
    result's job list (``{"id", "kind", "state"}``); only jobs done count."""
    done = [job for job in finished if job.get("state") == CardJob.State.DONE]
    if not done or card.holder_id is None:
        return None
    lines = "\n".join(f"- {CardJob.Kind(job['kind']).label}" for job in done if job["kind"] in CardJob.Kind.values)
    body = f"Your card {card.serial} was just presented, and this work is done:\n{lines}" + SIGN_OFF
    return email_holder(
        card, CitizenEmail.Kind.WORK_DONE, "Work on your card is done", body, dedupe_key=f"work_done:{session}"
    )


def work_done_after_commit(card: Card, *, session: str, finished: Iterable[dict[str, Any]]) -> None:
    """At a session's end (the relay's last exchange): schedule :func:`work_done` once the
    exchange commits, as a task, so the exchange itself runs no query for it."""
    done = [
        {"id": job.get("id"), "kind": job.get("kind"), "state": job.get("state")}
        for job in finished
        if job.get("state") == CardJob.State.DONE
    ]
    if not done or card.holder_id is None:
        return
    if Card.holder.is_cached(card) and card.holder is not None and not card.holder.email:
        return  # no address to write to (read with the card): no task
    card_id = card.pk

    def schedule() -> None:
        from cards.tasks import email_work_done

        email_work_done.delay(card_id, session, done)

    transaction.on_commit(schedule)


def preferences_of(user: User) -> NotificationPreferences:
    """The user's switches (every kind on until they change them; not saved by reading)."""
    found = NotificationPreferences.objects.filter(user=user).first()
    return found if found is not None else NotificationPreferences(user=user)


@transaction.atomic
def set_preferences(*, user: User, **switches: bool) -> NotificationPreferences:
    """Save the user's e-mail switches (unknown names are ignored); audited, switches only."""
    values = {name: bool(switches[name]) for name in SWITCHES if name in switches}
    preferences, _created = NotificationPreferences.objects.update_or_create(user=user, defaults=values)
    record_event(
        action="notifications.preferences_set",
        subject_type="user",
        subject_id=user.pk,
        actor=user,
        details={name: getattr(preferences, name) for name in SWITCHES},
    )
    return preferences
