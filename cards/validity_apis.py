"""REST API of the card validity policy (issue 19), mounted under /api/v1/: ``validity-policy/``
(GET for the agency's members, PUT for its operators; every error a problem document)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cards import validity
from cards.models import ValidityPolicy
from ecard.errors import ServiceError
from ecard.requests import acting_user
from issuers.models import Organization


class ValidityPolicySerializer(serializers.Serializer):
    years = serializers.IntegerField(min_value=1, max_value=validity.MAX_YEARS, help_text="how long a card is valid")
    renew_within_days = serializers.IntegerField(
        min_value=1,
        max_value=validity.MAX_RENEW_WITHIN_DAYS,
        help_text="a card nears its expiry (renewal offered, holder warned) this many days before it",
    )


def _answer(policy: ValidityPolicy) -> Response:
    return Response({"years": policy.years, "renew_within_days": policy.renew_within_days})


def _agency(request: Request) -> Organization:
    agency = validity.agency_of(acting_user(request))
    if agency is None:
        raise exceptions.NotFound("the validity policy is the agency's")
    return agency


class ValidityPolicyApi(APIView):
    """How long the agency's cards are valid, and how early they near their expiry."""

    @extend_schema(responses=ValidityPolicySerializer)
    def get(self, request: Request) -> Response:
        return _answer(validity.policy_of(_agency(request)))

    @extend_schema(request=ValidityPolicySerializer, responses=ValidityPolicySerializer)
    def put(self, request: Request) -> Response:
        agency = _agency(request)
        payload = ValidityPolicySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            policy = validity.set_policy(agency=agency, actor=acting_user(request), **payload.validated_data)
        except ServiceError as exc:
            if exc.code == "forbidden":
                raise exceptions.PermissionDenied(exc.message) from exc
            raise
        return _answer(policy)
