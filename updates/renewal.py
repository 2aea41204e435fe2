"""Renewal of a card in place (issue 19): new validity dates in its ISD and fresh ISD keys.

One stage, :class:`IsdRenewCard`, in a channel with the card's ISD:

1. **PUT KEY** of a fresh per-card key set (generated in the agency's custody, version
   ``to_kvn``) replacing the key set that opened the channel (GPC 2.3.1 §11.8; P1 = the version
   replaced). The card proves it by its R-MAC'd answer, the new version and the key check values
   of the keys it took (§11.8.3.1), or, at a later presentation, by a channel the new keys opened
   (the card cryptogram verifies only with them). Key choices are [current, new]: a card pulled
   after PUT KEY ran but before its answer came back refuses INITIALIZE UPDATE of the old version
   with 6A88 (no try spent) and opens with the new one.
2. **STORE DATA** to the ISD of ``5F25`` (effective date) and ``5F24`` (expiration date), YYMMDD
   BCD as in EMV (``gp.validity``), one block in BER-TLV format (§11.11.2.1: P1 b5-b4 = 10).
3. **GET DATA** ``5F25`` and ``5F24`` (§11.3): only their R-MAC'd answers, equal to what was
   stored, prove the new validity. An error status word carries no R-MAC and proves nothing.

Every command of the script is idempotent, so a renewal interrupted anywhere is simply run again
at the next presentation. Only what the card proved is recorded (:func:`record_renewal_effect`):
``Card.key_scheme = "stored"`` with the new ``isd_kvn`` (the engine then opens the ISD with the
stored key set, ``updates.ota.isd_choice``), the previous stored set superseded, and the new
validity dates, each with its audit entry; the holder is e-mailed once the card is renewed.

:func:`request_renewal` queues the ``renew_card`` job for one card (its holder, when the card is
near its expiry or expired, or an agency operator); campaigns over many cards are
``updates.renewal_campaign``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import record_event
from cards import notify, validity
from cards import services as card_services
from cards.models import Card, CardJob, CitizenEmail, SecurityDomain
from ecard.errors import ServiceError
from gp import commands
from gp.errors import LocalProtocolError
from gp.keys import Algorithm as KeyAlgorithm
from gp.keys import encode_put_key_symmetric
from gp.tlv import encode_tlv
from gp.validity import TAG_EFFECTIVE_DATE, TAG_EXPIRATION_DATE, encode_date, validity_objects
from issuers import custody
from issuers.custody_models import KeySet
from issuers.roles import principal
from updates.delegation import RemoteChannel
from updates.engine.effects import CardValidityStored, Effect, IsdKeysRotated
from updates.ota import (
    STORED_ISD_KEYS,
    Command,
    HostChannel,
    IsdStage,
    JobFailed,
    KeyChoice,
    Registry,
    Stage,
    Unconfirmed,
    isd_choice,
    isd_keyset,
)

ISD_KEY_LENGTH = 16  # AES-128 (SCP03) or two-key 3DES (SCP02), as the diversified keys they replace


def next_isd_kvn(kvn: int, scp: int) -> int:
    """The ISD's next key version in its SCP's range (SCP02 20-2F, SCP03 30-3F), wrapping from xF
    back to x1: the same rule as a bank SD's rotation (``cards.services.next_kvn``) and as the
    campaign's SQL (``updates.rollouts.dispatch``)."""
    base = 0x20 if scp == 0x02 else 0x30
    return kvn + 1 if kvn < base + 0x0F else base + 1


def renewal_params(card: Card, on: dt.date | None = None) -> dict[str, Any]:
    """What a ``renew_card`` job carries: the key versions and the new validity (the agency's
    policy, from ``on``)."""
    valid_from, valid_until = validity.validity_for(card.issued_by, on)
    return {
        "from_kvn": card.isd_kvn,
        "to_kvn": next_isd_kvn(card.isd_kvn, card.scp),
        "valid_from": valid_from.isoformat(),
        "valid_until": valid_until.isoformat(),
    }


class IsdRenewCard(IsdStage):
    """PUT KEY of fresh ISD keys, STORE DATA of the validity, GET DATA to read it back (see the
    module docstring). No registry listing: nothing here depends on the card's content."""

    name = "renew-card"
    status_p1: tuple[int, ...] = ()
    opened_with: KeyChoice

    def target_kvn(self) -> int:
        return int(self.job.params["to_kvn"])

    def dates(self) -> tuple[dt.date, dt.date]:
        try:
            return (
                dt.date.fromisoformat(self.job.params["valid_from"]),
                dt.date.fromisoformat(self.job.params["valid_until"]),
            )
        except (KeyError, TypeError, ValueError):
            raise JobFailed("the renewal names no valid dates") from None

    def preflight(self) -> None:
        card = self.card
        if card.isd_kvn == self.target_kvn() and card.key_scheme != STORED_ISD_KEYS:
            raise JobFailed(f"the card's ISD keys are already of version {card.isd_kvn:02X}")
        self.dates()

    def new_keyset(self) -> KeySet:
        """The card's new ISD key set, generated in the agency's custody once (idempotent)."""
        card = self.card
        existing = isd_keyset(card, self.target_kvn())
        if existing is not None:
            return existing
        return custody.generate_static_keys(
            card.issued_by,
            algorithm="aes" if card.scp == 0x03 else "3des",
            length=ISD_KEY_LENGTH,
            kvn=self.target_kvn(),
            card_cin=card.cin,
            sd_aid=card.isd_aid,
        )

    def key_choices(self) -> list[KeyChoice]:
        card = self.card
        new = self.new_keyset()
        new_choice = KeyChoice("keyset", new.kvn, new.pk)
        if card.key_scheme == STORED_ISD_KEYS and card.isd_kvn == new.kvn:
            return [new_choice]  # the card proved its new keys already
        current = isd_choice(card)
        # A later attempt tries the new keys first: an earlier PUT KEY may have run, its answer lost.
        return [new_choice, *current] if self.job.attempts > 1 else [*current, new_choice]

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        script: list[Command] = []
        target = self.target_kvn()
        if self.opened_with.kvn != target:
            if isinstance(channel, RemoteChannel):
                raise LocalProtocolError("the ISD's channel is never a bank key service's")
            new = self.new_keyset()
            algorithm: KeyAlgorithm = "aes" if self.card.scp == 0x03 else "des"
            data = encode_put_key_symmetric(
                new.kvn, custody.load_static_keys(new), channel.encrypt_key, algorithm=algorithm
            )
            # encode_put_key_symmetric starts with the new KVN, which put_key writes itself (§11.8.2.3);
            # the answer is the new KVN and the key check values of ENC, MAC, DEK (§11.8.3.1).
            script.append(
                Command(
                    commands.put_key(new.kvn, data[1:], old_kvn=self.opened_with.kvn, key_id=0x01),
                    f"rotate the ISD keys to version {new.kvn:02X}",
                    proves=f"isd-keys:{new.kvn:02X}",
                    proves_data=f"{new.kvn:02X}{new.kcv_enc}{new.kcv_mac}{new.kcv_dek}".upper(),
                )
            )
        valid_from, valid_until = self.dates()
        script.append(
            Command(
                commands.store_data(
                    validity_objects(valid_from, valid_until), 0, last=True, flags=commands.STORE_DATA_BER
                ),
                f"store the validity {valid_from.isoformat()} to {valid_until.isoformat()} (5F25, 5F24)",
            )
        )
        for tag, day, what in ((TAG_EFFECTIVE_DATE, valid_from, "from"), (TAG_EXPIRATION_DATE, valid_until, "until")):
            script.append(
                Command(
                    commands.get_data(tag),
                    f"read back {tag:X}",
                    proves=f"valid-{what}:{day.isoformat()}",
                    proves_data=encode_tlv(tag, encode_date(day)).hex().upper(),
                )
            )
        return script

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        card = self.card
        target = self.target_kvn()
        effects: list[Effect] = []
        if key.kvn != target and f"isd-keys:{target:02X}" not in registry.proofs:
            raise Unconfirmed("the card did not confirm its new ISD keys with an R-MAC")
        if not (card.key_scheme == STORED_ISD_KEYS and card.isd_kvn == target):
            previous = card.isd_kvn if card.key_scheme == STORED_ISD_KEYS else None
            effects.append(IsdKeysRotated(card.pk, target, previous))
        valid_from, valid_until = self.dates()
        if not {f"valid-from:{valid_from.isoformat()}", f"valid-until:{valid_until.isoformat()}"} <= registry.proofs:
            raise Unconfirmed("the card did not confirm its new validity with an R-MAC'd read-back", tuple(effects))
        effects.append(CardValidityStored(card.pk, valid_from.isoformat(), valid_until.isoformat()))
        return effects


def record_renewal_effect(stage: Stage, effect: IsdKeysRotated | CardValidityStored) -> None:
    """Record what the card proved (``updates.ota.apply_effects``, in the exchange's transaction),
    with its audit entry; the card object of the session follows."""
    card = stage.card
    now = timezone.now()
    if isinstance(effect, IsdKeysRotated):
        previous = card.isd_kvn
        Card.objects.filter(pk=effect.card).update(key_scheme=STORED_ISD_KEYS, isd_kvn=effect.kvn)
        card.key_scheme, card.isd_kvn = STORED_ISD_KEYS, effect.kvn
        SecurityDomain.objects.filter(card_id=effect.card, aid=card.isd_aid).update(key_kvn=effect.kvn, updated_at=now)
        sd = stage.job.security_domain
        if sd is not None and sd.aid == card.isd_aid:
            sd.key_kvn = effect.kvn
        if effect.supersedes is not None:
            KeySet.objects.filter(
                organization_id=card.issued_by_id,
                card_cin=card.cin,
                sd_aid=card.isd_aid,
                kvn=effect.supersedes,
                purpose=KeySet.Purpose.SCP_STATIC,
                state=KeySet.State.ACTIVE,
            ).update(state=KeySet.State.SUPERSEDED, rotated_at=now)
        record_event(
            action="card.isd_keys_rotated",
            subject_type="card",
            subject_id=card.cin,
            card_cin=card.cin,
            organization=card.issued_by,
            actor_type="agent",
            details={
                "job": stage.job.pk,
                "key_version": effect.kvn,
                "previous_key_version": previous,
                "algorithm": "aes" if card.scp == 0x03 else "3des",
            },
        )
        return
    previous_until = card.valid_until
    valid_from, valid_until = dt.date.fromisoformat(effect.valid_from), dt.date.fromisoformat(effect.valid_until)
    Card.objects.filter(pk=effect.card).update(valid_from=valid_from, valid_until=valid_until)
    card.valid_from, card.valid_until = valid_from, valid_until
    record_event(
        action="card.renewed",
        subject_type="card",
        subject_id=card.cin,
        card_cin=card.cin,
        organization=card.issued_by,
        actor_type="agent",
        details={
            "job": stage.job.pk,
            "valid_from": effect.valid_from,
            "valid_until": effect.valid_until,
            "previous_valid_until": previous_until.isoformat() if previous_until else None,
            "key_version": card.isd_kvn,
        },
    )
    notify.email_holder(
        card,
        CitizenEmail.Kind.RENEWED,
        "Your card was renewed",
        f"Your card {card.cin} was renewed: it is now valid until {valid_until.isoformat()}.\n",
        dedupe_key=f"renewed:{card.cin}:{effect.valid_until}",
    )


@transaction.atomic
def request_renewal(*, card: Card, actor: User) -> CardJob:
    """Queue the renewal of one card: its holder when it nears its expiry or has expired (an
    expired card is renewable), or an agency operator at any time. Audited (``job.queued``,
    ``card.renewal_requested``)."""
    card = Card.objects.select_for_update(of=("self",)).select_related("issued_by").get(pk=card.pk)
    who = principal(actor)
    agency_operator = who.can_operate(card.issued_by_id)
    if card.holder_id != actor.pk and not agency_operator:
        raise ServiceError("this is not your card", field="card", code="forbidden")
    if card.standing != Card.Standing.ACTIVE:
        raise ServiceError(f"the card is {card.get_standing_display().lower()}: it cannot be renewed", code="state")
    if card.lifecycle != Card.Lifecycle.SECURED:
        raise ServiceError(f"the card is {card.lifecycle}: it cannot be renewed", code="state")
    if not agency_operator and not validity.nears_expiry(card):
        days = validity.policy_of(card.issued_by).renew_within_days
        raise ServiceError(
            f"the card is valid until {card.valid_until}; renewal opens {days} days before its expiry", code="state"
        )
    if card.jobs.filter(kind=CardJob.Kind.RENEW_CARD, state__in=CardJob.OPEN_STATES).exists():
        raise ServiceError("a renewal of this card is already pending", code="duplicate")
    isd = SecurityDomain.objects.filter(card=card, is_isd=True).first()
    params = renewal_params(card)
    record_event(
        action="card.renewal_requested",
        subject_type="card",
        subject_id=card.cin,
        card_cin=card.cin,
        actor=actor,
        organization=card.issued_by,
        details={
            "valid_from": params["valid_from"],
            "valid_until": params["valid_until"],
            "expired": validity.is_expired(card),
            "by_holder": card.holder_id == actor.pk,
        },
    )
    return card_services.queue_job(
        card=card,
        kind=CardJob.Kind.RENEW_CARD,
        organization=card.issued_by,
        actor=actor,
        security_domain=isd,
        params=params,
    )


def renewal_status(card: Card) -> dict[str, Any]:
    """What a card page shows about the card's validity: its expiry, whether it has expired,
    whether renewal is offered (near its expiry or expired, in use) and whether one is pending."""
    pending = card.jobs.filter(kind=CardJob.Kind.RENEW_CARD, state__in=CardJob.OPEN_STATES).exists()
    in_use = card.standing == Card.Standing.ACTIVE and card.lifecycle == Card.Lifecycle.SECURED
    return {
        "valid_until": card.valid_until,
        "expired": validity.is_expired(card),
        "offered": in_use and validity.nears_expiry(card) and not pending,
        "pending": pending,
    }
