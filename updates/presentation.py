"""Who may present which card, and which of its jobs such a presentation may run.

The seam between the relay's credentials and the OTA engine: the engine asks here once the card
has identified itself (and proves itself later through the secure channel).

* A **device** credential (a card holder's own reader or phone) presents only its holder's card
  and runs every open job in creation order, as before.
* A **terminal** credential (an organisation's ATM or kiosk) presents any registered card that has
  a holder, while the credential is active and its organisation is not suspended. It runs only the
  open jobs the card's current holder consented to (:func:`holder_consented`), in creation order.
  Any other job waits for the holder's own device, and so does every later job on the same
  security domain, since it may depend on the one left waiting. Jobs on other security domains do
  not depend on it and still run.
* A **blocked or terminated** card (``Card.standing``, issue 19) runs only its card status work
  (SET STATUS of the card by the agency's ISD: ``card_status`` jobs), whoever presents it: any
  device, the holder's or not, and any active terminal, for the ISD's secure channel proves the
  card; this is how a stolen card gets locked wherever it shows up. The session then ends refused
  (:func:`standing_refusal`); with no such work left the card is refused at identification.
  Card status work always runs first (an unblocked, locked card is unlocked before other work).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from cards.models import Card, CardJob, Enrollment, SecurityDomain
from ecard.prepared_sql import JoinedRead
from updates.models import AgentCredential


class PresentationRefused(Exception):
    """The credential may not present this card (the relay's fault: the session is rejected)."""


# Work a bank does inside its own security domain, under the enrollment the holder consented to:
# "I allow <bank> to create its own security domain on my card, holding keys only <bank>
# controls, ... and to install: <applets>" (cards.services.consent_text_for).
BANK_WORK_UNDER_CONSENT = frozenset({CardJob.Kind.ROTATE_KEYS, CardJob.Kind.UPDATE_APPLET, CardJob.Kind.PERSONALIZE})


def standing_refusal(card: Card | None) -> str | None:
    """Why a card that is not in use is refused (the agent prints it), or None for a card in use."""
    if card is None or card.standing == Card.Standing.ACTIVE:
        return None
    if card.standing == Card.Standing.BLOCKED:
        return "this card is blocked (reported lost or stolen): it is refused"
    return "this card is terminated (replaced or withdrawn): it is refused"


def presentable_job_ids(credential: AgentCredential, card: Card | None) -> list[int]:
    """Ids of the open jobs of ``card`` this credential may run, in the order to run them.

    Raises :class:`PresentationRefused` when the credential may not present the card at all
    (``card`` is None when no registered card has the identity the card gave).
    """
    return [job.pk for job in presentable_jobs(credential, card)]


def presentable_jobs(credential: AgentCredential, card: Card | None, *, related: Sequence[str] = ()) -> list[CardJob]:
    """The open jobs of ``card`` this credential may run, in the order to run them, each read with
    ``related`` (``select_related``) in the same query: the engine's copies, not read again.

    Raises :class:`PresentationRefused` as :func:`presentable_job_ids` does.
    """
    refusal = standing_refusal(card)
    if card is not None and refusal is not None:
        if credential.organization_id is not None:
            _check_terminal(credential)
        # Put in order here, not by the database: with an ORDER BY, Django hashes every selected
        # column (the related rows' too) to match it against the select list.
        open_jobs = CardJob.objects.filter(state__in=CardJob.OPEN_STATES).order_by()
        status_work = _in_order(open_jobs.filter(card=card, kind=CardJob.Kind.CARD_STATUS).select_related(*related))
        if not status_work:
            raise PresentationRefused(refusal)
        return status_work
    if credential.organization_id is None:
        if card is None or card.holder_id != credential.user_id:
            raise PresentationRefused("this card is not registered to this device's owner")
        return _in_order(open_jobs_read(tuple(related)).rows(card.pk, CardJob.OPEN_STATES))
    _check_terminal(credential)
    if card is None:
        raise PresentationRefused("this card is not registered")
    if card.holder_id is None:
        raise PresentationRefused("this card has no holder, so nobody consented to work on it")
    runnable: list[CardJob] = []
    waiting_sds: set[int | None] = set()
    terminal_related = tuple(dict.fromkeys(("enrollment", "security_domain", *related)))
    for job in _in_order(open_jobs_read(terminal_related).rows(card.pk, CardJob.OPEN_STATES)):
        if job.kind == CardJob.Kind.CARD_STATUS or (
            job.security_domain_id not in waiting_sds and holder_consented(job, card)
        ):
            runnable.append(job)
        else:
            waiting_sds.add(job.security_domain_id)
    return runnable


@functools.cache
def open_jobs_read(related: tuple[str, ...]) -> JoinedRead[CardJob]:
    """The open jobs of a card with ``related`` joined, as a prepared statement made once per
    ``related`` (the relay's hot path: every presentation reads them, and its end counts them)."""
    return JoinedRead(CardJob, related, ("card", "state__in"))


def _in_order(jobs: Iterable[CardJob]) -> list[CardJob]:
    """Jobs in the order they run: card status work first (the agency's SET STATUS of the card: a
    locked card takes no other work), then by creation time, then id."""
    return sorted(jobs, key=lambda job: (job.kind != CardJob.Kind.CARD_STATUS, job.created_at, job.pk))


def _check_terminal(credential: AgentCredential) -> None:
    """A terminal presents cards only while it is active and its organisation is not suspended.

    Read afresh here (not from the credential cache): the session may have been opened before a
    revocation or a suspension that has committed since."""
    fresh = AgentCredential.objects.select_related("organization").filter(pk=credential.pk).first()
    if fresh is None or fresh.revoked_at is not None:
        raise PresentationRefused("this terminal credential is revoked")
    if fresh.organization is None or not fresh.organization.is_active:
        raise PresentationRefused("this terminal's organisation is suspended")


def holder_consented(job: CardJob, card: Card) -> bool:
    """Whether the card's holder consented to ``job``, from the records of that consent.

    * **enroll bank**: the job's enrollment was requested, with the consent text accepted, by the
      card's current holder, and is still requested (not cancelled or withdrawn).
    * **remove bank**: the card's current holder asked for the removal (a removal the bank or the
      agency queued waits for the holder's device).
    * **rotate keys, update applet**: the bank's own work in its own, active security domain, under
      an active enrollment of that bank that the card's current holder consented to.
    * **lock, unlock** (SET STATUS by the agency's ISD): never; the holder did not ask for it.
      (Card status work is the agency's decision and runs anyway: see :func:`presentable_jobs`.)
    """
    holder = card.holder_id
    sd = job.security_domain
    if sd is None or sd.card_id != card.pk or sd.is_isd:
        return False
    if job.kind == CardJob.Kind.ENROLL_BANK:
        enrollment = job.enrollment
        return (
            enrollment is not None
            and enrollment.card_id == card.pk
            and enrollment.requested_by_id == holder
            and enrollment.consented_at is not None
            and enrollment.status == Enrollment.Status.REQUESTED
            and enrollment.bank_id == job.organization_id == sd.organization_id
            and enrollment.security_domain_id == sd.pk
        )
    if job.kind == CardJob.Kind.REMOVE_BANK:
        return job.created_by_id == holder and sd.organization_id == job.organization_id
    if job.kind in BANK_WORK_UNDER_CONSENT:
        return (
            sd.organization_id == job.organization_id
            and sd.state == SecurityDomain.State.ACTIVE
            and Enrollment.objects.filter(
                card=card,
                bank_id=job.organization_id,
                security_domain=sd,
                status=Enrollment.Status.ACTIVE,
                requested_by_id=holder,
                consented_at__isnull=False,
            ).exists()
        )
    return False
