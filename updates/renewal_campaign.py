"""Renewal campaigns (issue 19): the agency renews its cards nearing expiry in waves.

A renewal campaign is a :class:`~updates.rollout_models.Rollout` with ``target_kind`` ``renew``
whose ``bank`` is the agency running it (no release, no package). It is planned, started,
paused, resumed and cancelled like any rollout (``updates.rollouts``: the same groups,
thresholds, retries, progress and the rollout API's actions); each target is the card's ISD, and
each card gets the ``renew_card`` job :func:`updates.renewal.request_renewal` would queue
(``updates.renewal.IsdRenewCard``: fresh ISD keys, the new validity stored and read back).

Targets: the agency's cards in use whose validity ends within its policy's renewal window,
expired ones included (``cards.validity.cards_nearing_expiry``), or an explicit list of cards,
any of its cards in use; never one whose renewal is already pending.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from cards import validity
from ecard.errors import ServiceError
from issuers.models import Organization
from updates.rollout_models import Rollout
from updates.rollouts.actions import _check_numbers, _listed, _new_rollout, _plan
from updates.rollouts.common import _audit, _can_operate
from updates.rollouts.groups import parse_groups


@transaction.atomic
def create_renewal_rollout(
    *,
    agency: Organization,
    actor: User | None,
    groups: Any,
    cins: list[str] | None = None,
    success_threshold: int = 100,
    error_threshold: int = 20,
    retry_count: int = 2,
    retry_backoff: int = 300,
    require_approval: bool = False,
    start_at: dt.datetime | None = None,
    name: str = "",
) -> Rollout:
    """Plan the renewal of the agency's cards nearing expiry (or of the listed cards) in waves;
    one open renewal campaign at a time. Audited (``rollout.created``, kind ``renew``)."""
    if not agency.is_agency:
        raise ServiceError("only the agency renews cards", field="agency", code="forbidden")
    if actor is not None:
        _can_operate(actor, agency)
    bounds = parse_groups(groups)
    _check_numbers(success_threshold, error_threshold, retry_count, retry_backoff)
    cins = _listed(cins, "renew every card nearing expiry instead")
    policy = validity.policy_of(agency)
    horizon = validity.renewal_horizon(agency)
    rollout = _new_rollout(
        bank=agency,
        release=None,
        package_aid="",
        actor=actor,
        bounds=bounds,
        name=name or f"Renewal of cards valid until {horizon.isoformat()} or earlier",
        target_kind=Rollout.Target.RENEW,
        success_threshold=success_threshold,
        error_threshold=error_threshold,
        retry_count=retry_count,
        retry_backoff=retry_backoff,
        require_approval=require_approval,
        start_at=start_at,
    )
    total = _plan(
        rollout,
        bounds,
        cins,
        lambda: f"belong to {agency.name}, be in use (SECURED, not blocked) and have no renewal pending",
        f"no card of {agency.name} in use expires by {horizon.isoformat()} without a renewal pending",
        empty_field="groups" if cins is None else "cins",
    )
    valid_from, valid_until = validity.validity_for(agency)
    _audit(
        rollout,
        "rollout.created",
        actor,
        kind="renew",
        targets=total,
        groups=rollout.group_spec,
        listed=cins is not None,
        expiring_by=None if cins is not None else horizon.isoformat(),
        validity_years=policy.years,
        valid_until=valid_until.isoformat(),
        valid_from=valid_from.isoformat(),
    )
    return rollout
