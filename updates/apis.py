"""REST API of the updates app: agent and terminal credentials, the relay protocol (DESIGN.md §6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ecard.api import ActionRules
from ecard.errors import ServiceError
from ecard.requests import acting_user
from ecard.throttling import FailOpenScopedThrottle
from gp import dap
from issuers import code_signing
from issuers.models import BankDapKey, Membership, Organization, ReleasePolicy
from issuers.roles import Principal, principal
from updates import releases, selectors, services
from updates.authentication import AgentTokenAuthentication
from updates.models import AgentCredential, CardSession, Release
from updates.rollout_apis import ReleaseSerializer
from updates.rollout_selectors import releases_for


class AgentCredentialSerializer(serializers.ModelSerializer):
    class Meta:
        model = AgentCredential
        fields = ("id", "name", "key_id", "created_at", "last_used_at", "revoked_at")


class IssueCredentialSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, default="device")


def card_holder(who: Principal, request: Request, obj: Any) -> bool:
    return who.is_citizen


class AgentCredentialViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A card holder's device credentials. The token is returned once, at creation."""

    serializer_class = AgentCredentialSerializer
    permission_classes = (ActionRules,)
    action_rules = {"create": card_holder, "revoke": card_holder}

    def get_queryset(self):
        return selectors.credentials_for(self.request.user)

    @extend_schema(
        request=IssueCredentialSerializer,
        responses={
            201: inline_serializer(
                "NewAgentCredential", {"token": serializers.CharField(), "id": serializers.IntegerField()}
            )
        },
    )
    def create(self, request: Request) -> Response:
        payload = IssueCredentialSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        credential, token = services.issue_agent_credential(
            user=acting_user(request), name=payload.validated_data["name"]
        )
        body = {**AgentCredentialSerializer(credential).data, "token": token}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=AgentCredentialSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        credential = services.revoke_agent_credential(credential=self.get_object(), actor=acting_user(request))
        return Response(AgentCredentialSerializer(credential).data)


class TerminalCredentialSerializer(serializers.ModelSerializer):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    issued_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = AgentCredential
        fields = ("id", "organization", "name", "key_id", "issued_by", "created_at", "last_used_at", "revoked_at")


class IssueTerminalCredentialSerializer(serializers.Serializer):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Organization.objects.none(),
        help_text="slug of the organisation (agency or bank) you are an admin of",
    )
    name = serializers.CharField(max_length=100, help_text="the terminal, e.g. 'ATM 12, Main Street'")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        field = self.fields["organization"]
        if request is not None and isinstance(field, serializers.SlugRelatedField):
            field.queryset = selectors.terminal_organizations_for(request.user)


def terminal_admin(who: Principal, request: Request, obj: Any) -> bool:
    """An admin of an organisation that runs terminals; for an object, an admin of its organisation."""
    if obj is not None:
        return obj.organization_id is not None and who.has_role(obj.organization_id, Membership.Role.ADMIN)
    return any(role == Membership.Role.ADMIN for role in who.roles.values())


class TerminalCredentialViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Terminal credentials of the organisations you administer (ATMs, kiosks). A terminal presents
    any card and runs only the work the card's holder consented to. The token is returned once, at
    creation."""

    serializer_class = TerminalCredentialSerializer
    permission_classes = (ActionRules,)
    action_rules = {
        "list": terminal_admin,
        "retrieve": terminal_admin,
        "create": terminal_admin,
        "revoke": terminal_admin,
    }

    def get_queryset(self):
        return selectors.terminal_credentials_for(self.request.user)

    @extend_schema(
        request=IssueTerminalCredentialSerializer,
        responses={
            201: inline_serializer(
                "NewTerminalCredential",
                {
                    "id": serializers.IntegerField(),
                    "organization": serializers.CharField(),
                    "name": serializers.CharField(),
                    "key_id": serializers.CharField(),
                    "token": serializers.CharField(),
                },
            )
        },
    )
    def create(self, request: Request) -> Response:
        payload = IssueTerminalCredentialSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        credential, token = services.issue_terminal_credential(
            organization=payload.validated_data["organization"],
            actor=acting_user(request),
            name=payload.validated_data["name"],
        )
        body = {**TerminalCredentialSerializer(credential).data, "token": token}
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(request=None, responses=TerminalCredentialSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        credential = services.revoke_terminal_credential(credential=self.get_object(), actor=acting_user(request))
        return Response(TerminalCredentialSerializer(credential).data)


class RelayCredentialThrottle(FailOpenScopedThrottle):
    """Requests per agent credential (a device relaying far more than a card needs is cut off)."""

    scope = "relay_credential"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        credential = request.auth
        if not isinstance(credential, AgentCredential):
            return None
        return self.cache_format % {"scope": self.scope, "ident": credential.key_id}


class RelayIpThrottle(FailOpenScopedThrottle):
    """Requests per client address on the relay, whatever the credential."""

    scope = "relay_ip"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


RELAY_THROTTLES = (RelayIpThrottle, RelayCredentialThrottle)


class IsAgent(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.auth, AgentCredential)


def agent_credential(request: Request) -> AgentCredential:
    """The agent credential that authenticated a relay request (``IsAgent`` admitted it)."""
    credential = request.auth
    if not isinstance(credential, AgentCredential):
        raise exceptions.NotAuthenticated()
    return credential


COMMAND = inline_serializer(
    "RelayCommand",
    {
        "apdu": serializers.CharField(),
        "expect": serializers.ListField(child=serializers.CharField()),
        "label": serializers.CharField(),
    },
)
RELAY_ANSWER = inline_serializer(
    "RelayBatch",
    {
        "session": serializers.UUIDField(),
        "exchange": serializers.IntegerField(),
        "state": serializers.CharField(),
        "commands": COMMAND,
        "done": serializers.BooleanField(),
        "progress": serializers.DictField(),
        "result": serializers.DictField(required=False),
    },
)


class OpenSessionSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=CardSession.Mode.choices, default=CardSession.Mode.BATCH)


MAX_RESPONSE_CHARS = 2 * 65538  # one R-APDU in hex: up to 65,536 data bytes and the status word


class ExchangeSerializer(serializers.Serializer):
    exchange = serializers.IntegerField(min_value=1)
    responses = serializers.ListField(
        child=serializers.CharField(max_length=MAX_RESPONSE_CHARS),
        min_length=1,
        max_length=services.MAX_BATCH_RESPONSES,
    )


def _open_payload(data: Any) -> str:
    """The session mode. A well-formed body is read directly; anything else goes through
    :class:`OpenSessionSerializer`, whose errors are the API's (the relay's hot path builds no
    serializer per request)."""
    if isinstance(data, dict) and set(data) <= {"mode"}:
        mode = data.get("mode", CardSession.Mode.BATCH)
        if isinstance(mode, str) and mode in CardSession.Mode.values:
            return mode
    payload = OpenSessionSerializer(data=data)
    payload.is_valid(raise_exception=True)
    return str(payload.validated_data["mode"])


def _exchange_payload(data: Any) -> tuple[int, list[str]]:
    """The exchange number and responses, as :func:`_open_payload` reads the mode: directly when
    well formed, else through :class:`ExchangeSerializer` (and its errors)."""
    if isinstance(data, dict):
        number, responses = data.get("exchange"), data.get("responses")
        if (
            type(number) is int
            and number >= 1
            and type(responses) is list
            and 1 <= len(responses) <= services.MAX_BATCH_RESPONSES
            and all(type(r) is str and r.strip() and len(r) <= MAX_RESPONSE_CHARS for r in responses)
        ):
            return number, [r.strip() for r in responses]
    payload = ExchangeSerializer(data=data)
    payload.is_valid(raise_exception=True)
    return payload.validated_data["exchange"], payload.validated_data["responses"]


class RelaySessionsApi(APIView):
    """Open a card session: the answer is the first batch (identify the card)."""

    authentication_classes = (AgentTokenAuthentication,)
    permission_classes = (IsAgent,)
    throttle_classes = RELAY_THROTTLES
    renderer_classes = (JSONRenderer,)  # agents speak JSON: no content negotiation among renderers

    @extend_schema(request=OpenSessionSerializer, responses={201: RELAY_ANSWER})
    def post(self, request: Request) -> Response:
        mode = _open_payload(request.data)
        answer = services.open_session(credential=agent_credential(request), mode=mode)
        return Response(answer.as_json(), status=status.HTTP_201_CREATED)


class RelayExchangeApi(APIView):
    """Post the responses to batch N; the answer is batch N+1, or the end of the session.

    A replayed, reordered, truncated or altered exchange closes the session: 409 with the reason.
    """

    authentication_classes = (AgentTokenAuthentication,)
    permission_classes = (IsAgent,)
    throttle_classes = RELAY_THROTTLES
    renderer_classes = (JSONRenderer,)

    @extend_schema(request=ExchangeSerializer, responses={200: RELAY_ANSWER})
    def post(self, request: Request, session_id: str) -> Response:
        number, responses = _exchange_payload(request.data)
        answer = services.exchange(
            session_id=session_id, credential=agent_credential(request), number=number, responses=responses
        )
        if answer.session.state == CardSession.State.REJECTED:
            raise SessionRejectedError(answer.session.closed_reason)
        return Response(answer.as_json())


class SessionRejectedError(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Session rejected"
    default_code = "session_rejected"


# ------------------------------------------------------------------- release approval and code signing


def _service(call: Callable[[], Any]) -> Any:
    """Run a service call; its permission refusals are 403s (other refusals go to the problem handler)."""
    try:
        return call()
    except ServiceError as exc:
        if exc.code == "forbidden":
            raise exceptions.PermissionDenied(exc.message) from exc
        raise


def _visible_release(request: Request, pk: int) -> Release:
    """A release the caller may see, else 404 (another bank's release does not exist for a bank)."""
    release = releases_for(acting_user(request)).filter(pk=pk).first()
    if release is None:
        raise exceptions.NotFound("no such release")
    return release


def _release_answer(request: Request, release: Release) -> Response:
    return Response(ReleaseSerializer(_visible_release(request, release.pk)).data)


class RejectReleaseSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=1000, help_text="why, for the bank")


class DapSignatureSerializer(serializers.Serializer):
    signature = serializers.CharField(
        max_length=4 * dap.SIGNATURE_LENGTH, help_text="the bank's DAP over the LFDB hash: r || s, 128 hex digits"
    )


class ApproveReleaseApi(APIView):
    """An agency operator approves a release awaiting review (never one of their own bank's)."""

    @extend_schema(request=None, responses=ReleaseSerializer)
    def post(self, request: Request, pk: int) -> Response:
        release, actor = _visible_release(request, pk), acting_user(request)
        if not principal(actor).agency_operator:
            raise exceptions.PermissionDenied("only an agency operator approves releases")
        return _release_answer(request, _service(lambda: releases.approve_release(release=release, actor=actor)))


class RejectReleaseApi(APIView):
    """An agency operator rejects a release awaiting review, with the reason the bank reads."""

    @extend_schema(request=RejectReleaseSerializer, responses=ReleaseSerializer)
    def post(self, request: Request, pk: int) -> Response:
        release, actor = _visible_release(request, pk), acting_user(request)
        if not principal(actor).agency_operator:
            raise exceptions.PermissionDenied("only an agency operator rejects releases")
        payload = RejectReleaseSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        reason = payload.validated_data["reason"]
        return _release_answer(
            request, _service(lambda: releases.reject_release(release=release, actor=actor, reason=reason))
        )


class ReleaseDapSignatureApi(APIView):
    """The bank's operators give the release's DAP signature; it must verify with the bank's DAP key."""

    @extend_schema(request=DapSignatureSerializer, responses=ReleaseSerializer)
    def post(self, request: Request, pk: int) -> Response:
        release, actor = _visible_release(request, pk), acting_user(request)
        if not principal(actor).can_operate(release.bank_id):
            raise exceptions.PermissionDenied(f"only {release.bank.name}'s operators sign its releases")
        payload = DapSignatureSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        signature = payload.validated_data["signature"]
        return _release_answer(
            request, _service(lambda: releases.add_dap_signature(release=release, signature=signature, actor=actor))
        )


def _visible_bank(request: Request, slug: str) -> Organization:
    """The bank ``slug`` for the agency, regulators and the bank's own members, else 404."""
    who = principal(acting_user(request))
    bank = Organization.objects.filter(slug=slug, kind=Organization.Kind.BANK).first()
    if bank is None or not (who.is_agency or who.is_regulator or bank.pk in who.bank_ids):
        raise exceptions.NotFound("no such bank")
    return bank


class ReleasePolicySerializer(serializers.Serializer):
    approval = serializers.ChoiceField(choices=ReleasePolicy.Approval.choices)


class ReleasePolicyApi(APIView):
    """How the agency approves a bank's releases: ``auto`` at upload (the default) or ``review`` by
    an agency operator. Read by the bank, the agency and regulators; set by agency administrators."""

    @extend_schema(responses=ReleasePolicySerializer)
    def get(self, request: Request, slug: str) -> Response:
        return Response({"approval": code_signing.release_approval(_visible_bank(request, slug))})

    @extend_schema(request=ReleasePolicySerializer, responses=ReleasePolicySerializer)
    def put(self, request: Request, slug: str) -> Response:
        bank, actor = _visible_bank(request, slug), acting_user(request)
        payload = ReleasePolicySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        approval = payload.validated_data["approval"]
        policy = _service(lambda: code_signing.set_release_policy(bank=bank, approval=approval, actor=actor))
        return Response({"approval": policy.approval})


class DapKeySerializer(serializers.Serializer):
    point = serializers.CharField(
        max_length=code_signing.MAX_POINT_TEXT,
        help_text="the DAP verification public key: an uncompressed P-256 point 04 || X || Y, hex",
    )


DAP_KEY_ANSWER = inline_serializer(
    "DapKeyState",
    {
        "point": serializers.CharField(allow_null=True),
        "fingerprint": serializers.CharField(allow_null=True),
        "set_at": serializers.DateTimeField(allow_null=True),
    },
)


def _dap_key_answer(bank: Organization) -> Response:
    key = BankDapKey.objects.filter(bank=bank).first()
    if key is None:
        return Response({"point": None, "fingerprint": None, "set_at": None})
    return Response({"point": key.point, "fingerprint": key.fingerprint, "set_at": key.set_at})


class BankDapKeyApi(APIView):
    """A bank's DAP verification public key (its SSDs verify the bank's signature with it). Public:
    read by the bank, the agency and regulators; set by the bank's administrators."""

    @extend_schema(responses=DAP_KEY_ANSWER)
    def get(self, request: Request, slug: str) -> Response:
        return _dap_key_answer(_visible_bank(request, slug))

    @extend_schema(request=DapKeySerializer, responses=DAP_KEY_ANSWER)
    def put(self, request: Request, slug: str) -> Response:
        bank, actor = _visible_bank(request, slug), acting_user(request)
        payload = DapKeySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        point = payload.validated_data["point"]
        _service(lambda: code_signing.set_bank_dap_key(bank=bank, point=point, actor=actor))
        return _dap_key_answer(bank)


class CodeSigningSerializer(serializers.Serializer):
    mandated_dap = serializers.BooleanField()


CODE_SIGNING_ANSWER = inline_serializer(
    "CodeSigningState",
    {
        "mandated_dap": serializers.BooleanField(),
        "mandated_dap_point": serializers.CharField(allow_null=True),
        "signed": serializers.IntegerField(required=False),
    },
)


def _code_signing_answer(**extra: Any) -> Response:
    enabled = code_signing.mandated_dap_enabled()
    point = code_signing.mandated_dap_public_point().hex().upper() if enabled else None
    return Response({"mandated_dap": enabled, "mandated_dap_point": point, **extra})


class CodeSigningApi(APIView):
    """The platform's code-signing settings: Mandated DAP (the agency signs every approved release
    too). Read by the agency and regulators; set by agency administrators."""

    @extend_schema(responses=CODE_SIGNING_ANSWER)
    def get(self, request: Request) -> Response:
        who = principal(acting_user(request))
        if not (who.is_agency or who.is_regulator):
            raise exceptions.PermissionDenied("for the agency and regulators")
        return _code_signing_answer()

    @extend_schema(request=CodeSigningSerializer, responses=CODE_SIGNING_ANSWER)
    def put(self, request: Request) -> Response:
        actor = acting_user(request)
        if not principal(actor).is_agency:
            raise exceptions.PermissionDenied("only agency administrators change the code-signing settings")
        payload = CodeSigningSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        enabled = payload.validated_data["mandated_dap"]
        _settings, signed = _service(lambda: releases.set_mandated_dap_policy(enabled=enabled, actor=actor))
        return _code_signing_answer(signed=signed)
