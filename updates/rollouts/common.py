"""What every part of a rollout uses: the rollout row locked first, the operator check, the audit entry."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection

from audit.services import record_event
from ecard.errors import ServiceError
from issuers.models import Organization
from issuers.roles import principal
from updates.rollout_models import Rollout


def _now_param(value: dt.datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _audit(rollout: Rollout, action: str, actor: Any = None, *, reason: str = "", **details: Any) -> None:
    record_event(
        action=action,
        subject_type="rollout",
        subject_id=rollout.pk,
        actor=actor,
        actor_org=rollout.bank if actor is not None else None,
        organization=rollout.bank,
        reason=reason,
        actor_type=None if actor is not None else "system",
        details={"release": rollout.release_id, "package_aid": rollout.package_aid, "state": rollout.state, **details},
    )


def _can_operate(actor: AbstractBaseUser | None, bank: Organization) -> None:
    if actor is None or not principal(actor).can_operate(bank.pk):
        raise ServiceError(f"only {bank.name}'s operators manage its rollouts", code="forbidden")


def _locked(rollout: Rollout | int) -> Rollout:
    pk = rollout.pk if isinstance(rollout, Rollout) else rollout
    return Rollout.objects.select_for_update(of=("self",)).select_related("bank", "release").get(pk=pk)
