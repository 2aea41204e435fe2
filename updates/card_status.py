"""The card's own life cycle, set from its ISD (issue 19: a blocked card locks, a replaced one ends).

:class:`IsdCardStatus` runs a ``card_status`` job (``params["target"]``: ``CARD_LOCKED``,
``TERMINATED`` or ``SECURED``): SET STATUS P1 ``80`` of the card, in a secure channel with the ISD
(GP 2.3.1 §11.10; card life cycle §5.1.1, coding §11.1.1). What the records take from it comes only
from R-MAC'd answers (DESIGN.md §7a):

* ``CARD_LOCKED`` and back to ``SECURED``: the ISD's entry in an R-MAC'd GET STATUS P1 ``80``
  listing read after the command (a CARD_LOCKED card still answers its ISD, §5.1.1.4);
* ``TERMINATED``: the R-MAC'd ``9000`` to SET STATUS itself. A terminated card answers nothing but
  GET DATA (§5.1.1.5), so no listing can follow; the stage reads none.

A bare status word (no R-MAC) proves nothing: the job stays pending and the card is refused all
the same (:mod:`updates.presentation`). The change is written by :func:`apply_card_lifecycle`
with its audit entry: ``card.locked``, ``card.terminated`` or ``card.unlocked``.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils import timezone

from audit.services import record_event
from cards.models import Card, CardJob
from gp import commands
from gp.commands import CardLifeCycle
from updates.engine.effects import CardLifecycle, Effect
from updates.engine.protocol import Command, JobFailed, KeyChoice, Registry, StepFailed, Unconfirmed
from updates.models import Release
from updates.ota import HostChannel, IsdStage

STATUS_ISD = commands.STATUS_ISD  # GET STATUS P1 80: the ISD, whose life cycle is the card's (§11.4.2.1)

# The targets a card_status job may name, with the byte SET STATUS P2 carries (§11.1.1).
TARGETS: dict[str, int] = {
    Card.Lifecycle.CARD_LOCKED: CardLifeCycle.CARD_LOCKED,
    Card.Lifecycle.TERMINATED: CardLifeCycle.TERMINATED,
    Card.Lifecycle.SECURED: CardLifeCycle.SECURED,
}
# The audit action a proven change writes (audit.reports counts these names).
ACTIONS: dict[str, str] = {
    Card.Lifecycle.CARD_LOCKED: "card.locked",
    Card.Lifecycle.TERMINATED: "card.terminated",
    Card.Lifecycle.SECURED: "card.unlocked",
}


def card_entry(registry: Registry) -> commands.RegistryEntry | None:
    """The ISD's entry of an R-MAC'd GET STATUS P1 80 listing (the runner files it with the load
    files, being no P1 40 entry): its life cycle byte is the card's."""
    return next((e for e in (*registry.elfs, *registry.apps) if e.kind == "card"), None)


def lifecycle_name(value: int) -> str | None:
    """The records' name of a card life cycle byte, or None for one the records do not know."""
    return next((name for name, byte in TARGETS.items() if byte == value), None)


class IsdCardStatus(IsdStage):
    """SET STATUS P1 80 (the card) to the job's target, from the ISD (GP 2.3.1 §11.10.2)."""

    name = "card-status"

    def __init__(self, job: CardJob) -> None:
        super().__init__(job)
        # A terminated card answers no GET STATUS (§5.1.1.5): the R-MAC'd 9000 to SET STATUS is the proof.
        self.status_p1 = () if self.target() == Card.Lifecycle.TERMINATED else (STATUS_ISD,)

    def target(self) -> str:
        target = str((self.job.params or {}).get("target", ""))
        if target not in TARGETS:
            raise JobFailed(f"a card status job names no known target ({target!r})")
        return target

    def proof(self) -> str:
        return f"card-status:{self.target()}"

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        target = self.target()
        entry = card_entry(registry)
        # Without a listing (a first attempt scripted ahead, or a target that reads none) the
        # records say where the card is; the card decides, and only its R-MAC'd answers count.
        current = entry.lifecycle if entry is not None else TARGETS.get(self.card.lifecycle, CardLifeCycle.SECURED)
        if current == TARGETS[target]:
            return []
        if current == CardLifeCycle.TERMINATED:
            raise JobFailed("the card is TERMINATED: its life cycle cannot change any more")
        if target == Card.Lifecycle.SECURED and current != CardLifeCycle.CARD_LOCKED:
            return []  # unlocking a card that is not locked: nothing to do (finish checks the listing)
        apdu = commands.set_status(commands.SET_STATUS_ISD, TARGETS[target])
        return [Command(apdu, f"set the card's life cycle to {target}", proves=self.proof())]

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        target = self.target()
        if target == Card.Lifecycle.TERMINATED:
            if self.proof() not in registry.proofs:
                raise Unconfirmed("the card did not confirm its termination with an R-MAC")
            return [CardLifecycle(self.card.pk, target)]
        entry = card_entry(registry)
        if entry is None:
            raise Unconfirmed("the card's life cycle was not listed with an R-MAC")
        listed = lifecycle_name(entry.lifecycle)
        if listed != target:
            raise StepFailed(f"the card lists its life cycle as {listed or hex(entry.lifecycle)}, not {target}")
        return [CardLifecycle(self.card.pk, target)]


def apply_card_lifecycle(card: Card, effect: CardLifecycle) -> None:
    """Record the life cycle the card proved, with its audit entry (only when it changed)."""
    previous = Card.objects.filter(pk=effect.card).values_list("lifecycle", flat=True).first()
    if previous is None or previous == effect.lifecycle:
        return
    Card.objects.filter(pk=effect.card).update(lifecycle=effect.lifecycle)
    if card.pk == effect.card:
        card.lifecycle = effect.lifecycle
    record_event(
        action=ACTIONS[effect.lifecycle],
        subject_type="card",
        subject_id=card.cin,
        card_cin=card.cin,
        organization=card.issued_by,
        actor_type="agent",
        details={"lifecycle": effect.lifecycle, "previous": previous, "proven_at": timezone.now().isoformat()},
    )


def release_ids_of_versions(bank_id: int, packages: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """For a card's replacement (``cards.lifecycle``, registered in ``UpdatesConfig.ready``): the
    bank's approved release of each (package AID, version), else its newest approved release of
    that package; a package with none is left out."""
    aids = {aid for aid, _version in packages}
    approved = list(
        Release.objects.filter(bank_id=bank_id, package_aid__in=aids, state=Release.State.APPROVED)
        .order_by("-created_at", "-pk")
        .values_list("pk", "package_aid", "package_version")
    )
    out: dict[tuple[str, str], int] = {}
    for aid, version in packages:
        exact = next((pk for pk, p, v in approved if p == aid and v == version), None)
        newest = next((pk for pk, p, _v in approved if p == aid), None)
        chosen = exact if exact is not None else newest
        if chosen is not None:
            out[(aid, version)] = chosen
    return out
