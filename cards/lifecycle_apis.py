"""REST API of a card's life (``cards.lifecycle``) and of banks' card notices and webhooks.

* ``POST cards/<cin>/block/``    ``{"reason"}``: the card's holder or the agency
* ``POST cards/<cin>/unblock/``  ``{"reason"}``: the agency
* ``POST cards/<cin>/replace/``  ``{"reason"?}``: the agency; 201 with the new card
* ``GET  notices/[?bank=<slug>]``: a bank's card notices (every bank's for the agency and
  regulators), newest first, paginated
* ``GET|PUT|DELETE webhooks/<bank slug>/``: the bank's webhook (``PUT {"url"}``; admins write)

A card outside the caller's view is a 404 (``cards.selectors.cards_for``); a role that may not act
is a 403; a refused change (already blocked, no reason) a 400/409 problem document.
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cards import lifecycle, selectors, webhooks
from cards.models import BankNotice, Card, Webhook
from ecard.errors import ServiceError
from ecard.requests import acting_user
from issuers.models import Organization
from issuers.roles import principal


class CardStandingSerializer(serializers.ModelSerializer):
    lifecycle = serializers.CharField(read_only=True, help_text="the card's life cycle as it last proved it")
    replaced_by: serializers.SlugRelatedField[Card] = serializers.SlugRelatedField(slug_field="cin", read_only=True)

    class Meta:
        model = Card
        fields = (
            "cin",
            "serial",
            "lifecycle",
            "standing",
            "standing_changed_at",
            "standing_reason",
            "replaced_by",
        )


class CardReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=lifecycle.MAX_REASON, allow_blank=True, default="")


class ReplaceCardSerializer(CardReasonSerializer):
    new_card = serializers.RegexField(
        r"^[0-9A-Fa-f]{8,32}$",
        required=False,
        allow_blank=True,
        default="",
        help_text="CIN of a card from the agency's stock (no holder yet, e.g. imported from a manufacturer's "
        "file); empty: a new card is issued",
    )


class BankNoticeSerializer(serializers.ModelSerializer):
    card: serializers.SlugRelatedField[Card] = serializers.SlugRelatedField(slug_field="cin", read_only=True)
    bank: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        source="organization", slug_field="slug", read_only=True
    )

    class Meta:
        model = BankNotice
        fields = (
            "id",
            "bank",
            "card",
            "kind",
            "message",
            "details",
            "delivery",
            "attempts",
            "last_error",
            "created_at",
            "delivered_at",
        )


class WebhookSerializer(serializers.ModelSerializer):
    class Meta:
        model = Webhook
        fields = ("url", "active", "created_at")
        read_only_fields = ("active", "created_at")


def _service(call: Any) -> Any:
    """A service's permission refusal is a 403 (other refusals go to the problem handler)."""
    try:
        return call()
    except ServiceError as exc:
        if exc.code == "forbidden":
            raise exceptions.PermissionDenied(exc.message) from exc
        raise


class _CardAction(APIView):
    """A life cycle change of one card the caller can see."""

    def card(self, request: Request, cin: str) -> Card:
        return get_object_or_404(selectors.cards_for(acting_user(request)), cin=cin.upper())

    def reason(self, request: Request) -> str:
        payload = CardReasonSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return str(payload.validated_data["reason"])


class BlockCardApi(_CardAction):
    """Block a lost or stolen card: the holder or the agency."""

    @extend_schema(request=CardReasonSerializer, responses=CardStandingSerializer)
    def post(self, request: Request, cin: str) -> Response:
        who = principal(acting_user(request))
        if not (who.is_citizen or who.agency_operator):
            raise exceptions.PermissionDenied("only the card's holder or the agency blocks a card")
        card = self.card(request, cin)
        reason = self.reason(request)
        card = _service(lambda: lifecycle.block_card(card=card, actor=acting_user(request), reason=reason))
        return Response(CardStandingSerializer(card).data)


class UnblockCardApi(_CardAction):
    """Unblock a card: the agency, with a reason."""

    @extend_schema(request=CardReasonSerializer, responses=CardStandingSerializer)
    def post(self, request: Request, cin: str) -> Response:
        if not principal(acting_user(request)).agency_operator:
            raise exceptions.PermissionDenied("only the agency unblocks a card")
        card = self.card(request, cin)
        reason = self.reason(request)
        card = _service(lambda: lifecycle.unblock_card(card=card, actor=acting_user(request), reason=reason))
        return Response(CardStandingSerializer(card).data)


class ReplaceCardApi(_CardAction):
    """Issue a replacement card: the agency. The answer is the new card."""

    @extend_schema(request=ReplaceCardSerializer, responses={201: CardStandingSerializer})
    def post(self, request: Request, cin: str) -> Response:
        if not principal(acting_user(request)).agency_operator:
            raise exceptions.PermissionDenied("only the agency replaces a card")
        card = self.card(request, cin)
        payload = ReplaceCardSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        reason, stock = str(payload.validated_data["reason"]), str(payload.validated_data["new_card"])
        new = _service(
            lambda: lifecycle.replace_card(old_card=card, actor=acting_user(request), reason=reason, new_card_cin=stock)
        )
        return Response(CardStandingSerializer(new).data, status=status.HTTP_201_CREATED)


def _member_banks(request: Request) -> list[int]:
    return principal(acting_user(request)).bank_ids


class BankNoticeListApi(generics.ListAPIView[BankNotice]):
    """A bank's card notices (blocked, unblocked, replaced cards; personalisation asked again)."""

    serializer_class = BankNoticeSerializer

    @extend_schema(parameters=[OpenApiParameter("bank", str, required=False, description="one of your banks")])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        who = principal(acting_user(request))
        if not (who.bank_ids or who.is_agency or who.is_regulator):
            raise exceptions.PermissionDenied("card notices are for banks (and the agency and regulators)")
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> Any:
        if not self.request.user.is_authenticated:  # drf-spectacular builds the schema anonymously
            return BankNotice.objects.none()
        who = principal(self.request.user)
        notices = BankNotice.objects.select_related("card", "organization")
        if not (who.is_agency or who.is_regulator):  # oversight reads every bank's
            notices = notices.filter(organization_id__in=who.bank_ids)
        slug = self.request.query_params.get("bank")
        if slug:
            notices = notices.filter(organization__slug=slug)
        return notices.order_by("-created_at", "-pk")


class WebhookApi(APIView):
    """The bank's webhook: members read it, admins set (``PUT {"url"}``) or remove it."""

    def bank(self, request: Request, slug: str) -> Organization:
        return get_object_or_404(Organization.objects.filter(pk__in=_member_banks(request)), slug=slug)

    @extend_schema(responses=WebhookSerializer)
    def get(self, request: Request, slug: str) -> Response:
        hook = get_object_or_404(Webhook, organization=self.bank(request, slug))
        return Response(WebhookSerializer(hook).data)

    @extend_schema(request=WebhookSerializer, responses=WebhookSerializer)
    def put(self, request: Request, slug: str) -> Response:
        bank = self.bank(request, slug)
        payload = WebhookSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        url = str(payload.validated_data["url"])
        hook = _service(lambda: webhooks.set_webhook(organization=bank, url=url, actor=acting_user(request)))
        return Response(WebhookSerializer(hook).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, slug: str) -> Response:
        bank = self.bank(request, slug)
        _service(lambda: webhooks.clear_webhook(organization=bank, actor=acting_user(request)))
        return Response(status=status.HTTP_204_NO_CONTENT)
