"""REST API of card repairs (``updates.repair``, docs/repair.md).

``GET/POST /api/v1/cards/<cin>/repairs/``: the card's repairs / the agency starts one;
``POST .../<id>/execute/`` (agency): run the plan (the touched banks are asked first);
``POST .../<id>/cancel/`` (agency); ``POST .../<id>/consent/`` (a touched bank): give or refuse.

A card outside the caller's view is a 404. A bank sees only the plan steps in its own security
domain and never the observed registry (other banks' content).
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cards import selectors as card_selectors
from cards.models import Card, CardRepair
from ecard.requests import acting_user
from issuers.roles import principal
from updates import repair as repairs
from updates.rollout_apis import _service, operated_bank


class CardRepairSerializer(serializers.ModelSerializer):
    plan = serializers.SerializerMethodField()
    observed = serializers.SerializerMethodField()
    consents = serializers.SerializerMethodField()
    jobs = serializers.SerializerMethodField()

    class Meta:
        model = CardRepair
        fields = ("id", "state", "reason", "plan", "observed", "consents", "jobs", "error", "created_at", "finished_at")

    def _bank_only(self) -> list[str] | None:
        """The caller's bank slugs when the caller sees a repair as a bank (not agency nor regulator)."""
        who = principal(self.context["request"].user)
        return None if who.is_agency or who.is_regulator else list(who.bank_slugs)

    def get_plan(self, repair: CardRepair) -> list[dict[str, Any]]:
        banks = self._bank_only()
        return [s for s in repair.plan if banks is None or s.get("bank") in banks]

    def get_observed(self, repair: CardRepair) -> dict[str, Any]:
        return repair.observed if self._bank_only() is None else {}

    def get_consents(self, repair: CardRepair) -> list[dict[str, Any]]:
        banks = self._bank_only()
        return [
            {"bank": c.bank.slug, "state": c.state, "decided_at": c.decided_at}
            for c in repair.consents.select_related("bank")
            if banks is None or c.bank.slug in banks
        ]

    def get_jobs(self, repair: CardRepair) -> list[int]:
        return sorted(repair.jobs.values_list("pk", flat=True))


class RepairStartSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


class RepairConsentSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=[("give", "give"), ("refuse", "refuse")])
    bank = serializers.SlugField(required=False, allow_blank=True, default="")


def _card(request: Request, cin: str) -> Card:
    return get_object_or_404(card_selectors.cards_for(acting_user(request)), cin=cin)


def _repairs(request: Request, card: Card) -> Any:
    """The card's repairs the caller may see: the agency and regulators all; a bank those whose
    plan touches its security domain (it sees the card only if it has one there)."""
    who = principal(acting_user(request))
    found = CardRepair.objects.filter(card=card)
    if who.is_agency or who.is_regulator:
        return found
    if who.bank_ids:
        return found.filter(consents__bank_id__in=who.bank_ids).distinct()
    return found.none()


def _answer(request: Request, repair: CardRepair, code: int = status.HTTP_200_OK) -> Response:
    repair.refresh_from_db()
    return Response(CardRepairSerializer(repair, context={"request": request}).data, status=code)


class CardRepairsApi(APIView):
    @extend_schema(responses=CardRepairSerializer(many=True))
    def get(self, request: Request, cin: str) -> Response:
        card = _card(request, cin)
        rows = _repairs(request, card).order_by("-created_at", "-id")[:50]
        return Response(CardRepairSerializer(rows, many=True, context={"request": request}).data)

    @extend_schema(request=RepairStartSerializer, responses={201: CardRepairSerializer})
    def post(self, request: Request, cin: str) -> Response:
        card = _card(request, cin)
        payload = RepairStartSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        repair = _service(
            lambda: repairs.start_repair(card=card, actor=acting_user(request), reason=payload.validated_data["reason"])
        )
        return _answer(request, repair, status.HTTP_201_CREATED)


class RepairExecuteApi(APIView):
    @extend_schema(request=None, responses=CardRepairSerializer)
    def post(self, request: Request, cin: str, pk: int) -> Response:
        repair = get_object_or_404(_repairs(request, _card(request, cin)), pk=pk)
        _service(lambda: repairs.execute_repair(repair=repair, actor=acting_user(request)))
        return _answer(request, repair)


class RepairCancelApi(APIView):
    @extend_schema(request=None, responses=CardRepairSerializer)
    def post(self, request: Request, cin: str, pk: int) -> Response:
        repair = get_object_or_404(_repairs(request, _card(request, cin)), pk=pk)
        _service(lambda: repairs.cancel_repair(repair=repair, actor=acting_user(request)))
        return _answer(request, repair)


class RepairConsentApi(APIView):
    @extend_schema(request=RepairConsentSerializer, responses=CardRepairSerializer)
    def post(self, request: Request, cin: str, pk: int) -> Response:
        repair = get_object_or_404(_repairs(request, _card(request, cin)), pk=pk)
        payload = RepairConsentSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        if principal(acting_user(request)).is_agency:
            raise exceptions.PermissionDenied("a bank answers for its own security domain")
        bank = operated_bank(request, payload.validated_data["bank"])
        give = payload.validated_data["decision"] == "give"
        _service(lambda: repairs.decide_consent(repair=repair, bank=bank, actor=acting_user(request), give=give))
        return _answer(request, repair)
