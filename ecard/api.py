"""Shared pieces of the REST API: per-action permission rules over the caller's principal.

Reads are scoped by selectors (an object outside the caller's scope is a 404, never a 403, so
its existence does not leak). Writes on visible objects are checked here (403 when refused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rest_framework import permissions
from rest_framework.request import Request
from rest_framework.views import APIView

from issuers.roles import Principal, principal

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
