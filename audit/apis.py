"""REST API of the audit log for regulators (thin views over :mod:`audit.selectors` / :mod:`audit.services`).

Routes (under ``/api/v1/``):

* ``GET  audit/log``                                 origin, size, root and verifier key of the log
* ``GET  audit/entries/``                            entries visible to the caller (filters, pagination)
* ``GET  audit/entries/{index}/``                    one entry
* ``GET  audit/entries/{index}/proof?tree_size=N``   RFC 9162 inclusion proof
* ``GET  audit/consistency?first=M&second=N``        RFC 9162 consistency proof
* ``GET  audit/checkpoints/``, ``…/latest/``, ``…/{size}/``   signed checkpoints
* ``POST audit/checkpoints/``                        sign the current tree head (agency operators)
* ``GET  audit/export[?from=M][&to=N]``             the log (or entries M..N-1, N a checkpoint size) as
                                                     ``ecard-audit-export/1`` JSON Lines, streamed

Nothing else writes: entries are appended only by the platform's services.
"""

from __future__ import annotations

import base64
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import security, selectors, services
from audit.merkle import ProofError
from audit.models import AuditEntry, Checkpoint, SecurityEvent
from ecard.api import BIGINT_MAX, ActionRules, agency_operator, anyone, query_int


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode()


class ActorSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=AuditEntry.ActorType.choices)
    id = serializers.CharField(allow_null=True)
    organisation = serializers.CharField(allow_null=True)


class SubjectSerializer(serializers.Serializer):
    type = serializers.CharField()
    id = serializers.CharField()


class EntrySerializer(serializers.Serializer):
    """The entry exactly as the log hashed it (format 1), plus its stored leaf hash (hex)."""

    index = serializers.IntegerField()
    time = serializers.CharField(help_text="RFC 3339 UTC")
    actor = ActorSerializer()
    action = serializers.CharField()
    subject = SubjectSerializer()
    card = serializers.CharField(allow_null=True, help_text="CIN of the card concerned")
    organisation = serializers.CharField(allow_null=True, help_text="slug of the organisation concerned")
    outcome = serializers.ChoiceField(choices=AuditEntry.Outcome.choices)
    reason = serializers.CharField(allow_null=True)
    receipt = serializers.CharField(allow_null=True, help_text="card receipt, lowercase hex")
    details = serializers.DictField()
    leaf_hash = serializers.CharField(help_text="RFC 9162 leaf hash, hex")

    def to_representation(self, instance: AuditEntry) -> dict[str, Any]:
        return {**instance.as_entry(), "leaf_hash": instance.stored_leaf_hash().hex()}


class CosignatureSerializer(serializers.Serializer):
    witness = serializers.CharField()
    key_name = serializers.CharField()
    key_id = serializers.CharField(help_text="hex")
    timestamp = serializers.IntegerField(help_text="POSIX seconds")


class CheckpointSerializer(serializers.ModelSerializer):
    root_hash = serializers.SerializerMethodField(help_text="base64")
    text = serializers.CharField(
        source="published_text",
        read_only=True,
        help_text="the signed note, with the witnesses' cosignature lines appended",
    )
    cosignatures = CosignatureSerializer(many=True, read_only=True)

    class Meta:
        model = Checkpoint
        fields = ("size", "root_hash", "text", "key_id", "cosignatures", "created_at")

    def get_root_hash(self, checkpoint: Checkpoint) -> str:
        return b64(checkpoint.root_hash)


ProofSerializer = inline_serializer(
    "InclusionProof",
    {
        "index": serializers.IntegerField(),
        "tree_size": serializers.IntegerField(),
        "leaf_hash": serializers.CharField(help_text="hex"),
        "root_hash": serializers.CharField(help_text="base64, root of the tree of tree_size entries"),
        "proof": serializers.ListField(child=serializers.CharField(), help_text="base64 hashes, RFC 9162 order"),
        "checkpoint": serializers.CharField(allow_null=True, help_text="the signed checkpoint of that size, if any"),
    },
)
ConsistencySerializer = inline_serializer(
    "ConsistencyProof",
    {
        "first": serializers.IntegerField(),
        "second": serializers.IntegerField(),
        "first_root": serializers.CharField(help_text="base64"),
        "second_root": serializers.CharField(help_text="base64"),
        "proof": serializers.ListField(child=serializers.CharField(), help_text="base64 hashes, RFC 9162 order"),
    },
)
LogSerializer = inline_serializer(
    "AuditLog",
    {
        "origin": serializers.CharField(),
        "verifier_key": serializers.CharField(allow_null=True, help_text="publish this to regulators"),
        "size": serializers.IntegerField(),
        "root_hash": serializers.CharField(help_text="base64"),
        "latest_checkpoint": CheckpointSerializer(allow_null=True),
    },
)


# A tree size or leaf index as the schema documents it (larger or negative values are 400s).
TREE_SIZE = {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX}


def _size_param(request: Request, name: str, *, default: int | None = None) -> int:
    """A tree size or index: decimal digits, at most 2**63-1 (beyond the log is the caller's ProofError)."""
    return query_int(request, name, default=default)


_FILTER_PARAMS = [
    OpenApiParameter("card", str, description="card CIN"),
    OpenApiParameter("organization", str, description="slug of the organisation the event concerns"),
    OpenApiParameter("action", str, description="e.g. card.issued"),
    OpenApiParameter("outcome", str, enum=list(AuditEntry.Outcome.values)),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="time >= since"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="time < until"),
    OpenApiParameter(
        "from_index", TREE_SIZE, description="entries with index >= from_index (page on with ordering=index)"
    ),
]


class EntryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Entries of the log the caller may read (agency and regulators: all; a bank: its own; a
    citizen: their cards'). Read-only."""

    permission_classes = (ActionRules,)
    action_rules = {"proof": anyone}
    serializer_class = EntrySerializer
    filterset_class = selectors.EntryFilter
    lookup_field = "index"
    lookup_value_regex = r"\d+"
    ordering_fields = ("index", "time")

    def get_queryset(self):
        entries = selectors.entries_for(self.request.user, card_cins=selectors.held_card_cins(self.request.user))
        if self.action == "list" and self.request.query_params.get("from_index"):
            entries = entries.filter(index__gte=_size_param(self.request, "from_index"))
        return entries

    @extend_schema(parameters=_FILTER_PARAMS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        parameters=[OpenApiParameter("tree_size", TREE_SIZE, description="default: the current size of the log")],
        responses={200: ProofSerializer},
    )
    @action(detail=True, methods=["get"])
    def proof(self, request: Request, index: str | None = None) -> Response:
        """RFC 9162 §2.1.3 inclusion proof of this entry in the tree of ``tree_size`` entries."""
        entry = self.get_object()
        if request.query_params.get("tree_size"):
            tree_size = _size_param(request, "tree_size")
        else:
            tree_size = selectors.current_size()
        if tree_size <= entry.index:
            raise ValidationError({"tree_size": [f"must be greater than the entry index {entry.index}"]})
        try:
            proof, root = selectors.inclusion_with_root(entry.index, tree_size)
        except ProofError as exc:
            raise ValidationError({"tree_size": [str(exc)]}) from None
        checkpoint = Checkpoint.objects.filter(size=tree_size).first()
        return Response(
            {
                "index": entry.index,
                "tree_size": tree_size,
                "leaf_hash": bytes(entry.leaf_hash).hex(),
                "root_hash": b64(root),
                "proof": [b64(h) for h in proof],
                "checkpoint": checkpoint.published_text if checkpoint else None,
            }
        )


@extend_schema_view(proof=extend_schema(operation_id="v1_audit_entry_inclusion_proof"))
class EntryProofViewSet(EntryViewSet):
    """``audit/entries/{index}/proof`` as documented (no trailing slash)."""


class CheckpointViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Signed checkpoints (newest first). Agency operators may sign one on demand."""

    permission_classes = (ActionRules,)
    action_rules = {"create": agency_operator, "latest": anyone}
    serializer_class = CheckpointSerializer
    lookup_field = "size"
    lookup_value_regex = r"\d+"
    filterset_fields = ()
    ordering_fields = ("size",)

    def get_queryset(self):
        return selectors.checkpoints()

    @extend_schema(request=None, responses={201: CheckpointSerializer, 200: CheckpointSerializer})
    def create(self, request: Request) -> Response:
        """Sign the current tree head now (200 with the existing checkpoint when the log has not grown)."""
        checkpoint, created = services.ensure_checkpoint()
        return Response(
            CheckpointSerializer(checkpoint).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(responses={200: CheckpointSerializer})
    @action(detail=False, methods=["get"])
    def latest(self, request: Request) -> Response:
        checkpoint = selectors.latest_checkpoint()
        if checkpoint is None:
            raise NotFound("the log has no signed checkpoint yet")
        return Response(CheckpointSerializer(checkpoint).data)


class ConsistencyView(APIView):
    permission_classes = (IsAuthenticated,)

    @extend_schema(
        parameters=[
            OpenApiParameter("first", TREE_SIZE, required=True),
            OpenApiParameter("second", TREE_SIZE, required=True),
        ],
        responses={200: ConsistencySerializer},
    )
    def get(self, request: Request) -> Response:
        """RFC 9162 §2.1.4 consistency proof between the trees of ``first`` and ``second`` entries."""
        first, second = _size_param(request, "first"), _size_param(request, "second")
        if first > second:
            raise ValidationError({"first": ["must not exceed second"]})
        selectors.catch_up()  # a size just reached by committed entries is provable at once
        try:
            proof, *roots = selectors.consistency_with_roots(first, second)
        except ProofError as exc:
            raise ValidationError({"second": [str(exc)]}) from None
        return Response(
            {
                "first": first,
                "second": second,
                "first_root": b64(roots[0]),
                "second_root": b64(roots[1]),
                "proof": [b64(h) for h in proof],
            }
        )


class LogView(APIView):
    permission_classes = (IsAuthenticated,)

    @extend_schema(responses={200: LogSerializer})
    def get(self, request: Request) -> Response:
        """The log's origin, verifier key and current tree head (unsigned; see checkpoints)."""
        size, root = selectors.current_head()
        latest = selectors.latest_checkpoint()
        return Response(
            {
                "origin": selectors.log_origin(),
                "verifier_key": services.log_verifier_key(create=False),
                "size": size,
                "root_hash": b64(root),
                "latest_checkpoint": CheckpointSerializer(latest).data if latest else None,
            }
        )


class ExportView(APIView):
    permission_classes = (IsAuthenticated,)

    @extend_schema(
        parameters=[
            OpenApiParameter("size", TREE_SIZE, description="a checkpoint size (default: the latest)"),
            OpenApiParameter("to", TREE_SIZE, description="same as size: the export ends before entry `to`"),
            OpenApiParameter(
                "from", TREE_SIZE, description="first entry (a range export: the header carries the frontier at it)"
            ),
        ],
        responses={
            (200, "application/jsonl"): OpenApiResponse(
                OpenApiTypes.STR, description="ecard-audit-export/1 JSON Lines; check with python -m audit.verify"
            )
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        """The whole log up to a signed checkpoint, with earlier checkpoints and consistency proofs
        (agency and regulators only)."""
        if not selectors.can_export(request.user):
            raise PermissionDenied("only the agency and regulators export the whole log")
        size_name = "to" if request.query_params.get("to") else "size"
        if request.query_params.get(size_name):
            size = _size_param(request, size_name)
            checkpoint = Checkpoint.objects.filter(size=size).first()
            if checkpoint is None:
                raise NotFound(f"no signed checkpoint of size {size}: `{size_name}` must be a checkpoint size")
        else:
            checkpoint = selectors.latest_checkpoint()
            if checkpoint is None:
                raise NotFound("the log has no signed checkpoint yet")
        start = _size_param(request, "from", default=0)
        if start > checkpoint.size:
            raise ValidationError({"from": [f"must not exceed the checkpoint size {checkpoint.size}"]})
        return export_response(checkpoint, start)


def export_response(checkpoint: Checkpoint, start: int = 0) -> StreamingHttpResponse:
    """A streamed download of the export (shared with the portal)."""
    lines = (chunk.encode("utf-8") for chunk in services.export_lines(checkpoint, start=start))
    response = StreamingHttpResponse(lines, content_type="application/jsonl; charset=utf-8")
    name = f"audit-log-{start}-{checkpoint.size}" if start else f"audit-log-{checkpoint.size}"
    response["Content-Disposition"] = f'attachment; filename="{name}.jsonl"'
    response["Cache-Control"] = "no-store"
    return response


class SecurityEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = SecurityEvent
        fields = (
            "id",
            "kind",
            "first_seen",
            "last_seen",
            "count",
            "username",
            "source",
            "method",
            "path",
            "status",
            "organization_slug",
            "reason",
        )


@extend_schema_view(
    list=extend_schema(summary="Refused actions (agency and regulators; 404 for everyone else)"),
    retrieve=extend_schema(summary="One security event"),
)
class SecurityEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The security event log: refused logins, refused API credentials, 403s, object-route 404s,
    refused consents and rejected uploads (docs/audit.md, "Security event log")."""

    serializer_class = SecurityEventSerializer
    permission_classes = (ActionRules,)
    filterset_class = selectors.SecurityEventFilter
    ordering_fields = ("last_seen", "count")

    def get_queryset(self):
        return selectors.security_events_for(self.request.user)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not selectors.can_read_security_events(request.user):
            # Not there for banks and citizens (not even as a 403); the refusal itself is recorded.

            security.record(security.Kind.NOT_FOUND, request=request._request, status=404, reason="security event log")
            security.mark_logged(request._request)
            raise NotFound()
