"""REST API of renewals (issue 19), mounted under /api/v1/:

``renewals/``                the agency plans a renewal campaign (POST; its operators): the cards
                             nearing expiry, or the listed ones, in waves. It is a rollout: start,
                             pause, resume, cancel and progress are ``/rollouts/<id>/…``.
``cards/<cin>/renewal/``     renew one card (POST): its holder when it nears its expiry or has
                             expired, or an agency operator.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cards import validity
from cards.selectors import cards_for
from ecard.requests import acting_user
from updates import renewal
from updates import rollout_selectors as selectors
from updates.renewal_campaign import create_renewal_rollout
from updates.rollout_apis import RolloutSerializer, _service
from updates.rollouts import MAX_LISTED_CARDS


class CreateRenewalSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
    cins = serializers.ListField(
        child=serializers.CharField(max_length=32),
        required=False,
        allow_null=True,
        default=None,
        max_length=MAX_LISTED_CARDS,
        help_text="renew these cards (whatever their expiry) instead of every card nearing expiry",
    )
    groups = serializers.ListField(
        child=serializers.CharField(max_length=16),
        min_length=1,
        help_text='cumulative: ["1%", "10%", "100%"] or card counts ["5", "100%"]',
    )
    success_threshold = serializers.IntegerField(default=100, min_value=1, max_value=100)
    error_threshold = serializers.IntegerField(default=20, min_value=1, max_value=100)
    retry_count = serializers.IntegerField(default=2, min_value=0, max_value=10)
    retry_backoff = serializers.IntegerField(default=300, min_value=0, max_value=7 * 86400)
    require_approval = serializers.BooleanField(default=False)
    start_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class RenewalsApi(APIView):
    """Plan a renewal campaign of the caller's agency."""

    @extend_schema(request=CreateRenewalSerializer, responses={201: RolloutSerializer})
    def post(self, request: Request) -> Response:
        actor = acting_user(request)
        agency = validity.agency_of(actor)
        if agency is None:
            raise exceptions.PermissionDenied("only the agency's operators renew cards")
        payload = CreateRenewalSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        rollout = _service(lambda: create_renewal_rollout(agency=agency, actor=actor, **payload.validated_data))
        rollout = selectors.rollouts_for(actor).get(pk=rollout.pk)
        return Response(RolloutSerializer(rollout).data, status=status.HTTP_201_CREATED)


RENEWAL_ANSWER = inline_serializer(
    "CardRenewal",
    {
        "job": serializers.IntegerField(),
        "state": serializers.CharField(),
        "valid_from": serializers.DateField(),
        "valid_until": serializers.DateField(),
    },
)


class CardRenewalApi(APIView):
    """Queue the renewal of one card: new validity and ISD keys at its next presentation."""

    @extend_schema(request=None, responses={201: RENEWAL_ANSWER})
    def post(self, request: Request, cin: str) -> Response:
        actor = acting_user(request)
        card = cards_for(actor).filter(cin=cin.upper()).first()
        if card is None:
            raise exceptions.NotFound("no such card")
        job = _service(lambda: renewal.request_renewal(card=card, actor=actor))
        return Response(
            {
                "job": job.pk,
                "state": job.state,
                "valid_from": job.params["valid_from"],
                "valid_until": job.params["valid_until"],
            },
            status=status.HTTP_201_CREATED,
        )
