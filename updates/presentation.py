"""Who may present which card, and which of its jobs such a presentation may run.

The seam between the relay's credentials and the OTA engine: the engine asks here once the card
has identified itself (and proves itself later through the secure channel). Today only the
holder's own device credential presents a card, and it runs every open job in creation order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cards.models import CardJob

if TYPE_CHECKING:
    from cards.models import Card
    from updates.models import AgentCredential


class PresentationRefused(Exception):
    """The credential may not present this card (the relay's fault: the session is rejected)."""


def presentable_job_ids(credential: AgentCredential, card: Card | None) -> list[int]:
    """Ids of the open jobs of ``card`` this credential may run, in the order to run them.

    Raises :class:`PresentationRefused` when the credential may not present the card at all
    (``card`` is None when no registered card has the identity the card gave).
    """
    if card is None or card.holder_id != credential.user_id:
        raise PresentationRefused("this card is not registered to this device's owner")
    return list(
        card.jobs.filter(state__in=CardJob.OPEN_STATES).order_by("created_at", "id").values_list("pk", flat=True)
    )
