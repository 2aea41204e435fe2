"""REST API of the updates app: agent and terminal credentials, the relay protocol (DESIGN.md §6)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ecard.api import ActionRules
from ecard.requests import acting_user
from ecard.throttling import FailOpenScopedThrottle
from issuers.models import Membership, Organization
from issuers.roles import Principal
from updates import selectors, services
from updates.authentication import AgentTokenAuthentication
from updates.models import AgentCredential, CardSession


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


class ExchangeSerializer(serializers.Serializer):
    exchange = serializers.IntegerField(min_value=1)
    responses = serializers.ListField(child=serializers.CharField(max_length=2 * 65538), min_length=1, max_length=2048)


class RelaySessionsApi(APIView):
    """Open a card session: the answer is the first batch (identify the card)."""

    authentication_classes = (AgentTokenAuthentication,)
    permission_classes = (IsAgent,)
    throttle_classes = RELAY_THROTTLES

    @extend_schema(request=OpenSessionSerializer, responses={201: RELAY_ANSWER})
    def post(self, request: Request) -> Response:
        payload = OpenSessionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        answer = services.open_session(credential=agent_credential(request), mode=payload.validated_data["mode"])
        return Response(answer.as_json(), status=status.HTTP_201_CREATED)


class RelayExchangeApi(APIView):
    """Post the responses to batch N; the answer is batch N+1, or the end of the session.

    A replayed, reordered, truncated or altered exchange closes the session: 409 with the reason.
    """

    authentication_classes = (AgentTokenAuthentication,)
    permission_classes = (IsAgent,)
    throttle_classes = RELAY_THROTTLES

    @extend_schema(request=ExchangeSerializer, responses={200: RELAY_ANSWER})
    def post(self, request: Request, session_id: str) -> Response:
        payload = ExchangeSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        answer = services.exchange(
            session_id=session_id,
            credential=agent_credential(request),
            number=payload.validated_data["exchange"],
            responses=payload.validated_data["responses"],
        )
        if answer.session.state == CardSession.State.REJECTED:
            raise SessionRejectedError(answer.session.closed_reason)
        return Response(answer.as_json())


class SessionRejectedError(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Session rejected"
    default_code = "session_rejected"
