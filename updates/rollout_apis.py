"""REST API of releases and rollouts (mounted under /api/v1/): thin views over services and selectors.

``/releases/``  bank operators upload CAP files (multipart ``cap_file``, ``changelog``, optional
                ``bank`` slug), list and retrieve their bank's releases, revoke one, edit its
                changelog. The agency and regulators read every release.
``/rollouts/``  create, approve (a second user of the bank), start, pause, resume, cancel; progress
                per group and overall; per-card status; failures with their reasons.

Objects of another bank are 404 (scoped querysets); refused writes on visible objects are 403;
every error is a problem document.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ecard.api import ActionRules, anyone
from ecard.errors import ServiceError
from ecard.parsers import FormParser, JSONParser, MultiPartParser
from ecard.requests import acting_user
from issuers.models import Organization
from issuers.roles import Principal, principal
from updates import releases as release_services
from updates import rollout_fleet
from updates import rollout_selectors as selectors
from updates import rollouts as rollout_services
from updates.models import Release
from updates.rollout_models import Rollout, RolloutTarget


def bank_operator(who: Principal, request: Request, obj: Any) -> bool:
    if obj is None:
        return any(who.can_operate(bank_id) for bank_id in who.bank_ids)
    return who.can_operate(obj.bank_id)


def campaign_operator(who: Principal, request: Request, obj: Any) -> bool:
    """A rollout's own organisation's operators act on it: a bank's on its rollouts, the agency's
    on its renewal campaigns (``updates.renewal_campaign``)."""
    if obj is None:
        return who.agency_operator or any(who.can_operate(bank_id) for bank_id in who.bank_ids)
    return who.can_operate(obj.bank_id)


def bank_or_agency_operator(who: Principal, request: Request, obj: Any) -> bool:
    if obj is None:
        return who.agency_operator or any(who.can_operate(bank_id) for bank_id in who.bank_ids)
    return who.agency_operator or who.can_operate(obj.bank_id)


def _service(call: Any) -> Any:
    """Run a service call; its permission refusals are 403s (other refusals go to the problem handler)."""
    try:
        return call()
    except ServiceError as exc:
        if exc.code == "forbidden":
            raise exceptions.PermissionDenied(exc.message) from exc
        raise


def operated_bank(request: Request, slug: str | None) -> Organization:
    """The bank the caller acts for: the one named, else the only bank they operate."""
    who = principal(acting_user(request))
    banks = Organization.objects.filter(pk__in=[b for b in who.bank_ids if who.can_operate(b)])
    if slug:
        bank = banks.filter(slug=slug).first()
        if bank is None:
            raise exceptions.ValidationError({"bank": [f"you do not operate a bank {slug!r}"]})
        return bank
    found = list(banks[:2])
    if len(found) != 1:
        raise exceptions.ValidationError({"bank": ["name the bank (slug) you act for"]})
    return found[0]


# ------------------------------------------------------------------------------------------ releases


class ReleaseSerializer(serializers.ModelSerializer):
    bank: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.CharField(source="package_version", read_only=True)
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    approved_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = Release
        fields = (
            "id",
            "bank",
            "package_aid",
            "version",
            "applet_aids",
            "imports",
            "filename",
            "lfdb_size",
            "lfdb_sha256",
            "lfdb_sha1",
            "cap_sha256",
            "changelog",
            "state",
            "approval",
            "approved_by",
            "approved_at",
            "rejection_reason",
            "dap_signature",
            "agency_dap_signature",
            "created_by",
            "created_at",
        )
        read_only_fields = fields


class UploadSerializer(serializers.Serializer):
    cap_file = serializers.FileField(help_text="the CAP file (zip) or IJC", allow_empty_file=True)
    changelog = serializers.CharField(required=False, allow_blank=True, default="", max_length=20_000)
    bank = serializers.SlugField(
        required=False, allow_blank=True, default="", help_text="the bank's slug; needed if you operate several"
    )


class ChangelogSerializer(serializers.Serializer):
    changelog = serializers.CharField(allow_blank=True, max_length=20_000)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)


class ReleaseViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A bank's applet releases: immutable CAP files with their hashes (the changelog can be edited)."""

    serializer_class = ReleaseSerializer
    permission_classes = (ActionRules,)
    parser_classes = (MultiPartParser, FormParser, JSONParser)
    action_rules = {"create": bank_operator, "revoke": bank_or_agency_operator, "partial_update": bank_operator}
    filterset_fields = ("package_aid", "state")
    ordering_fields = ("created_at", "package_aid")

    def get_queryset(self):
        return selectors.releases_for(self.request.user)

    @extend_schema(request={"multipart/form-data": UploadSerializer}, responses={201: ReleaseSerializer})
    def create(self, request: Request) -> Response:
        payload = UploadSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        bank = operated_bank(request, payload.validated_data["bank"])
        upload = payload.validated_data["cap_file"]
        cap_bytes = upload.read(release_services.MAX_CAP_BYTES + 1)
        filename = "".join(ch for ch in (upload.name or "upload.cap") if ch.isprintable())[:255] or "upload.cap"
        release = _service(
            lambda: release_services.create_release(
                bank=bank,
                cap_bytes=cap_bytes,
                filename=filename,
                changelog=payload.validated_data["changelog"],
                actor=acting_user(request),
            )
        )
        return Response(ReleaseSerializer(release).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ChangelogSerializer, responses=ReleaseSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        payload = ChangelogSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        release = _service(
            lambda: release_services.update_changelog(
                release=self.get_object(), actor=acting_user(request), changelog=payload.validated_data["changelog"]
            )
        )
        return Response(ReleaseSerializer(release).data)

    @extend_schema(request=ReasonSerializer, responses=ReleaseSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        payload = ReasonSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        release = _service(
            lambda: release_services.revoke_release(
                release=self.get_object(), actor=acting_user(request), reason=payload.validated_data["reason"]
            )
        )
        return Response(ReleaseSerializer(release).data)


# ------------------------------------------------------------------------------------------ rollouts


class RolloutSerializer(serializers.ModelSerializer):
    bank: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    to_version = serializers.CharField(source="release.package_version", read_only=True)
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    approved_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    progress = serializers.SerializerMethodField()
    upgrade_paths = serializers.SerializerMethodField()

    class Meta:
        model = Rollout
        fields = (
            "id",
            "name",
            "bank",
            "release",
            "package_aid",
            "from_version",
            "to_version",
            "target_kind",
            "install_instances",
            "group_spec",
            "success_threshold",
            "error_threshold",
            "retry_count",
            "retry_backoff",
            "require_approval",
            "approved_by",
            "approved_at",
            "start_at",
            "state",
            "pause_reason",
            "total",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "progress",
            "upgrade_paths",
        )
        read_only_fields = fields

    def get_progress(self, rollout: Rollout) -> dict[str, Any]:
        return selectors.progress(rollout)

    def get_upgrade_paths(self, rollout: Rollout) -> dict[str, int]:
        """Cards upgraded in place (data kept) and cards where the package is deleted and
        reinstalled (data delivered again): known before the rollout starts."""
        return selectors.upgrade_paths(rollout)


class InstallInstanceSerializer(serializers.Serializer):
    instance_aid = serializers.CharField(max_length=40, help_text="in the bank's AID range, 5 to 16 bytes hex")
    module_aid = serializers.CharField(max_length=40, required=False, allow_blank=True)
    privileges = serializers.CharField(max_length=8, required=False, allow_blank=True, default="00")
    install_params = serializers.CharField(max_length=140, required=False, allow_blank=True, default="")


class CreateRolloutSerializer(serializers.Serializer):
    target = serializers.ChoiceField(
        choices=[("update", "update"), ("install", "install"), ("rotate", "rotate")],
        default="update",
        help_text="update: cards carrying the package (or the listed ones); install: cards without the package "
        "(all, listed or in cards_csv); rotate: the keys of every security domain of the bank",
    )
    bank = serializers.SlugField(required=False, allow_blank=True, default="", help_text="for rotate: the bank's slug")
    release = serializers.IntegerField(required=False, allow_null=True, default=None, help_text="id of the release")
    instances = InstallInstanceSerializer(
        many=True, required=False, default=list, help_text="install: the instances to create"
    )
    cards_csv = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=2 * 1024 * 1024,
        help_text="install: a CSV text with a card_number column, instead of cins",
    )
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
    from_version = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=16,
        help_text="target cards with the package at this version (blank: any other)",
    )
    cins = serializers.ListField(
        child=serializers.CharField(max_length=32),
        required=False,
        allow_null=True,
        default=None,
        max_length=rollout_services.MAX_LISTED_CARDS,
        help_text="an explicit list of cards instead of all cards with the package",
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


class TargetSerializer(serializers.ModelSerializer):
    cin = serializers.CharField(source="card.cin", read_only=True)
    group = serializers.IntegerField(source="group.index", read_only=True)

    class Meta:
        model = RolloutTarget
        fields = ("cin", "group", "status", "attempts", "last_error", "next_retry_at", "job", "instances", "updated_at")
        read_only_fields = fields


STATUS_PARAM = OpenApiParameter("status", str, enum=RolloutTarget.Status.values, required=False)


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Staged rollouts of a bank's releases, with progress per group and overall."""

    serializer_class = RolloutSerializer
    permission_classes = (ActionRules,)
    action_rules = {
        "create": bank_operator,
        "approve": campaign_operator,
        "start": campaign_operator,
        "pause": campaign_operator,
        "resume": campaign_operator,
        "cancel": campaign_operator,
        "cards": anyone,  # reads: the queryset is already scoped
        "failures": anyone,
    }
    filterset_fields = ("state", "package_aid")
    ordering_fields = ("created_at",)

    def get_queryset(self):
        return selectors.rollouts_for(self.request.user)

    def _answer(self, rollout: Rollout, code: int = status.HTTP_200_OK) -> Response:
        rollout = selectors.rollouts_for(acting_user(self.request)).get(pk=rollout.pk)
        return Response(RolloutSerializer(rollout).data, status=code)

    @extend_schema(request=CreateRolloutSerializer, responses={201: RolloutSerializer})
    def create(self, request: Request) -> Response:
        payload = CreateRolloutSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        actor = acting_user(request)
        common = {
            "actor": actor,
            "groups": data["groups"],
            "success_threshold": data["success_threshold"],
            "error_threshold": data["error_threshold"],
            "retry_count": data["retry_count"],
            "retry_backoff": data["retry_backoff"],
            "require_approval": data["require_approval"],
            "start_at": data["start_at"],
            "name": data["name"],
        }
        if data["target"] == "rotate":
            bank = operated_bank(request, data["bank"])
            rollout = _service(lambda: rollout_services.create_rotation_rollout(bank=bank, **common))
            return self._answer(rollout, status.HTTP_201_CREATED)
        if data["release"] is None:
            raise exceptions.ValidationError({"release": ["name the release"]})
        release = selectors.releases_for(actor).filter(pk=data["release"]).first()
        who = principal(actor)
        if release is None or not who.can_operate(release.bank_id):
            raise exceptions.ValidationError({"release": ["no such release of a bank you operate"]})
        if data["cards_csv"] and data["target"] != "install":
            raise exceptions.ValidationError({"cards_csv": ["cards_csv is for an install campaign; give cins"]})
        if data["target"] == "install":
            cins = data["cins"]
            if data["cards_csv"]:
                if cins is not None:
                    raise exceptions.ValidationError({"cards_csv": ["give cins or cards_csv, not both"]})
                cins = rollout_fleet.parse_card_csv(data["cards_csv"])
            rollout = _service(
                lambda: rollout_services.create_install_rollout(
                    bank=release.bank,
                    release=release,
                    instances=[dict(i) for i in data["instances"]],
                    cins=cins,
                    **common,
                )
            )
            return self._answer(rollout, status.HTTP_201_CREATED)
        rollout = _service(
            lambda: rollout_services.create_rollout(
                bank=release.bank,
                release=release,
                from_version=data["from_version"],
                cins=data["cins"],
                **common,
            )
        )
        return self._answer(rollout, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=RolloutSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        rollout, actor = self.get_object(), acting_user(request)
        return self._answer(_service(lambda: rollout_services.approve_rollout(rollout=rollout, actor=actor)))

    @extend_schema(request=None, responses=RolloutSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        rollout, actor = self.get_object(), acting_user(request)
        return self._answer(_service(lambda: rollout_services.start_rollout(rollout=rollout, actor=actor)))

    @extend_schema(request=ReasonSerializer, responses=RolloutSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        rollout = self.get_object()
        payload = ReasonSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return self._answer(
            _service(
                lambda: rollout_services.pause_rollout(
                    rollout=rollout, actor=acting_user(request), reason=payload.validated_data["reason"]
                )
            )
        )

    @extend_schema(request=None, responses=RolloutSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        rollout, actor = self.get_object(), acting_user(request)
        return self._answer(_service(lambda: rollout_services.resume_rollout(rollout=rollout, actor=actor)))

    @extend_schema(request=ReasonSerializer, responses=RolloutSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        rollout = self.get_object()
        payload = ReasonSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return self._answer(
            _service(
                lambda: rollout_services.cancel_rollout(
                    rollout=rollout, actor=acting_user(request), reason=payload.validated_data["reason"]
                )
            )
        )

    @extend_schema(parameters=[STATUS_PARAM], responses=TargetSerializer(many=True))
    @action(detail=True, methods=["get"])
    def cards(self, request: Request, pk: str | None = None) -> Response:
        """Per-card status with the last error (paginated; ``?status=failed`` to filter)."""
        rollout = self.get_object()
        wanted = request.query_params.get("status") or None
        if wanted is not None and wanted not in RolloutTarget.Status.values:
            raise exceptions.ValidationError({"status": [f"one of {', '.join(RolloutTarget.Status.values)}"]})
        page = self.paginate_queryset(selectors.targets_of(rollout, wanted))
        return self.get_paginated_response(TargetSerializer(page, many=True).data)

    @extend_schema(
        responses=inline_serializer(
            "RolloutFailures",
            {"failed": serializers.IntegerField(), "reasons": serializers.ListField(child=serializers.DictField())},
        )
    )
    @action(detail=True, methods=["get"])
    def failures(self, request: Request, pk: str | None = None) -> Response:
        """Failed cards grouped by their last error, most frequent first."""
        rollout = self.get_object()
        failed = selectors.progress(rollout)["overall"]["failed"]
        return Response({"failed": failed, "reasons": selectors.failure_reasons(rollout)})
