"""REST API of personalisation data (``updates.personalization``): a bank's upload for its
instances on its customers' cards. The answer names what was queued, never the data."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ecard.requests import acting_user
from updates import personalization
from updates.rollout_apis import _service, operated_bank


class PersonalizationUploadSerializer(serializers.Serializer):
    bank = serializers.SlugField(required=False, allow_blank=True, default="")
    file = serializers.FileField(required=False, help_text="CSV: card_number, instance_aid, data_hex or sealed_b64")
    items = serializers.ListField(child=serializers.DictField(child=serializers.CharField()), required=False)


class PersonalizationApi(APIView):
    """``POST``: per-card personalisation data, as a CSV file or JSON items; all or nothing."""

    parser_classes = (JSONParser, MultiPartParser, FormParser)

    @extend_schema(
        request=PersonalizationUploadSerializer,
        responses={
            201: inline_serializer(
                "PersonalizationQueued",
                {"queued": serializers.IntegerField(), "jobs": serializers.ListField(child=serializers.IntegerField())},
            )
        },
    )
    def post(self, request: Request) -> Response:
        payload = PersonalizationUploadSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        bank = operated_bank(request, payload.validated_data["bank"])
        upload = payload.validated_data.get("file")
        if upload is not None:
            raw = upload.read(personalization.MAX_UPLOAD + 1)
            items = _service(lambda: personalization.items_from_upload(raw))
        else:
            items = _service(lambda: personalization.items_from_json({"items": payload.validated_data.get("items")}))
        records: list[Any] = _service(
            lambda: personalization.submit_personalization(bank=bank, items=items, actor=acting_user(request))
        )
        jobs = sorted({r.job_id for r in records if r.job_id is not None})
        return Response({"queued": len(records), "jobs": jobs}, status=status.HTTP_201_CREATED)
