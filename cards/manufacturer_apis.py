"""REST API of manufacturer files (``cards.manufacturer``): the agency uploads a card
manufacturer's personalisation file; the answer is the batch, or a 400 problem naming the lines."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from cards import manufacturer, selectors
from cards.models import ManufacturerBatch
from ecard.api import ActionRules, agency_operator
from ecard.errors import ServiceError
from ecard.requests import acting_user
from issuers.models import Organization
from issuers.roles import principal


class ManufacturerBatchSerializer(serializers.ModelSerializer):
    agency: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    imported_by = serializers.SerializerMethodField()

    class Meta:
        model = ManufacturerBatch
        fields = (
            "id",
            "agency",
            "manufacturer",
            "file_name",
            "file_sha256",
            "transport_kcv",
            "card_count",
            "imported_by",
            "created_at",
        )

    def get_imported_by(self, batch: ManufacturerBatch) -> str | None:
        return batch.imported_by.get_username() if batch.imported_by is not None else None


class ManufacturerFileUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="the manufacturer's file, format ecard-manufacturer-file/1")


class ManufacturerBatchViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Imported manufacturer files. ``POST`` (agency operators): import one, all cards or none."""

    serializer_class = ManufacturerBatchSerializer
    permission_classes = (ActionRules,)
    action_rules = {"create": agency_operator}

    def get_queryset(self):  # untyped like the other viewsets: DRF's request.user may be anonymous
        return selectors.manufacturer_batches_for(self.request.user)

    @extend_schema(
        request={"multipart/form-data": ManufacturerFileUploadSerializer},
        responses={
            201: ManufacturerBatchSerializer,
            400: inline_serializer("Refused", {"detail": serializers.CharField()}),
        },
    )
    def create(self, request: Request) -> Response:
        payload = ManufacturerFileUploadSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        upload = payload.validated_data["file"]
        if upload.size is not None and upload.size > manufacturer.MAX_FILE_BYTES:
            raise ServiceError(f"the file is larger than {manufacturer.MAX_FILE_BYTES} bytes", field="file")
        agency = Organization.objects.get(pk=principal(request.user).org_ids(Organization.Kind.AGENCY)[0])
        batch = manufacturer.import_manufacturer_file(
            agency=agency, data=upload.read(), file_name=upload.name or "", actor=acting_user(request)
        )
        return Response(ManufacturerBatchSerializer(batch).data, status=status.HTTP_201_CREATED)
