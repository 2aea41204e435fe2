"""Shared pieces of the REST API: per-action permission rules over the caller's principal.

Reads are scoped by selectors (an object outside the caller's scope is a 404, never a 403, so
its existence does not leak). Writes on visible objects are checked here (403 when refused).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rest_framework import permissions
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.views import APIView

from ecard.principals import Principal, principal

Rule = Callable[[Principal, Request, Any], bool]


def deny(who: Principal, request: Request, obj: Any) -> bool:
    return False


def anyone(who: Principal, request: Request, obj: Any) -> bool:
    return who.is_authenticated


def agency_operator(who: Principal, request: Request, obj: Any) -> bool:
    return who.agency_operator


class ActionRules(permissions.BasePermission):
    """Looks up ``view.action_rules[action]`` (default: reads allowed, writes denied).

    A rule is called with ``obj=None`` for the request as a whole, and again with the object
    for object-level actions; both must pass.
    """

    READ_ACTIONS = frozenset({"list", "retrieve", "metadata"})

    def _rule(self, view: APIView) -> Rule:
        action = getattr(view, "action", None) or ""
        rules: dict[str, Rule] = getattr(view, "action_rules", {})
        if action in rules:
            return rules[action]
        return anyone if action in self.READ_ACTIONS else deny

    def has_permission(self, request: Request, view: APIView) -> bool:
        who = principal(request.user)
        if not who.is_authenticated:
            return False
        return self._rule(view)(who, request, None)

    def has_object_permission(self, request: Request, view: APIView, obj: Any) -> bool:
        return self._rule(view)(principal(request.user), request, obj)


DECIMAL = re.compile(r"[0-9]+")
BIGINT_MAX = 2**63 - 1  # the largest value every database column of the platform holds


def query_int(request: Request, name: str, *, default: int | None = None, maximum: int = BIGINT_MAX) -> int:
    """A non-negative integer query parameter (ASCII decimal digits only), else a 400 that says why.

    ``int()`` alone accepts signs, spaces, underscores and non-ASCII digits, and numbers beyond
    what a database column holds (a 500 when they reach a query).
    """
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValidationError({name: ["this parameter is required"]})
        return default
    if not DECIMAL.fullmatch(raw):
        raise ValidationError({name: ["must be a non-negative integer (decimal digits)"]})
    if len(raw) > len(str(maximum)) or int(raw) > maximum:
        raise ValidationError({name: [f"must be at most {maximum}"]})
    return int(raw)
