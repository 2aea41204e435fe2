"""REST API views of the cards app: thin, over selectors and services."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from cards import selectors, services
from cards.models import AppletInstance, Card, CardJob, CardPackage, Enrollment, SecurityDomain
from ecard.api import ActionRules, agency_operator
from ecard.requests import acting_user
from issuers.models import Membership, Organization
from issuers.roles import Principal, principal
from issuers.selectors import active_banks


class CardSerializer(serializers.ModelSerializer):
    holder = serializers.SerializerMethodField()
    issued_by: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = Card
        fields = ("id", "cin", "serial", "lifecycle", "isd_aid", "scp", "issued_by", "holder", "emulated", "created_at")

    def get_holder(self, card: Card) -> str | None:
        """Only the agency and the holder see who holds a card."""
        who = principal(self.context["request"].user)
        if card.holder is not None and (who.is_agency or card.holder_id == who.user_id):
            return card.holder.get_username()
        return None


class BankCardSerializer(serializers.ModelSerializer):
    """What a bank sees of a card that carries its security domain."""

    class Meta:
        model = Card
        fields = ("id", "cin", "lifecycle")


class IssueCardSerializer(serializers.Serializer):
    holder = serializers.CharField(required=False, allow_blank=True, default="", help_text="username")
    cin = serializers.CharField(required=False, allow_blank=True, default="", max_length=32)
    serial = serializers.CharField(required=False, allow_blank=True, default="", max_length=32)
    scp = serializers.ChoiceField(choices=[(2, "SCP02"), (3, "SCP03")], default=3)
    emulated = serializers.BooleanField(default=True)


class AssignHolderSerializer(serializers.Serializer):
    holder = serializers.CharField(help_text="username")


def lookup_user(username: str, field: str = "holder") -> Any:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise serializers.ValidationError({field: ["no such user"]})
    return user


class CardViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Cards. The agency issues them and assigns holders; holders and banks see their part."""

    permission_classes = (ActionRules,)
    action_rules = {"create": agency_operator, "partial_update": agency_operator}
    filterset_fields = ("lifecycle", "cin", "scp")
    ordering_fields = ("cin", "created_at")

    def get_queryset(self):
        return selectors.cards_for(self.request.user)

    def get_serializer_class(self):
        who = principal(self.request.user)
        if who.bank_ids and not (who.is_agency or who.is_regulator):
            return BankCardSerializer
        return CardSerializer

    @extend_schema(request=IssueCardSerializer, responses={201: CardSerializer})
    def create(self, request: Request) -> Response:
        payload = IssueCardSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        who = principal(request.user)
        agency = Organization.objects.get(pk=who.org_ids(Organization.Kind.AGENCY)[0])
        holder = lookup_user(data["holder"]) if data["holder"] else None
        card = services.issue_card(
            agency=agency,
            holder=holder,
            cin=data["cin"],
            serial=data["serial"],
            scp=data["scp"],
            emulated=data["emulated"],
            actor=acting_user(request),
        )
        return Response(CardSerializer(card, context={"request": request}).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=AssignHolderSerializer, responses=CardSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        card = self.get_object()
        payload = AssignHolderSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        card = services.assign_holder(
            card=card, holder=lookup_user(payload.validated_data["holder"]), actor=acting_user(request)
        )
        return Response(CardSerializer(card, context={"request": request}).data)


class SecurityDomainSerializer(serializers.ModelSerializer):
    card: serializers.SlugRelatedField[Card] = serializers.SlugRelatedField(slug_field="cin", read_only=True)
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = SecurityDomain
        fields = (
            "id",
            "card",
            "organization",
            "aid",
            "is_isd",
            "privileges",
            "management",
            "scp",
            "scp_i",
            "key_kvn",
            "auth_failures",
            "lifecycle",
            "state",
            "created_at",
            "updated_at",
        )


class CardJobSerializer(serializers.ModelSerializer):
    card: serializers.SlugRelatedField[Card] = serializers.SlugRelatedField(slug_field="cin", read_only=True)
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    security_domain: serializers.SlugRelatedField[SecurityDomain] = serializers.SlugRelatedField(
        slug_field="aid", read_only=True
    )

    class Meta:
        model = CardJob
        fields = (
            "id",
            "card",
            "kind",
            "organization",
            "security_domain",
            "state",
            "attempts",
            "last_error",
            "created_at",
            "started_at",
            "finished_at",
        )


def sd_owner_operator(who: Principal, request: Request, obj: Any) -> bool:
    """Key rotation: operators of the bank that owns the SD (the agency for the ISD)."""
    if obj is None:
        return bool(who.bank_ids) or who.agency_operator
    return who.can_operate(obj.organization_id)


def sd_owner_admin(who: Principal, request: Request, obj: Any) -> bool:
    """Clearing failed authentications: an administrator of the organisation that owns the SD."""
    if obj is None:
        return any(role == Membership.Role.ADMIN for role in who.roles.values())
    return who.has_role(obj.organization_id, Membership.Role.ADMIN)


def sd_owner_or_agency_operator(who: Principal, request: Request, obj: Any) -> bool:
    if obj is None:
        return bool(who.bank_ids) or who.agency_operator
    return who.can_operate(obj.organization_id) or who.agency_operator


class SecurityDomainViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Security domains on cards. Banks see and act on their own only."""

    serializer_class = SecurityDomainSerializer
    permission_classes = (ActionRules,)
    action_rules = {
        "rotate_keys": sd_owner_operator,
        "lock": sd_owner_or_agency_operator,
        "unlock": sd_owner_or_agency_operator,
        "reset_auth_failures": sd_owner_admin,
    }
    filterset_fields = ("state", "lifecycle", "is_isd", "organization__slug", "card__cin")
    ordering_fields = ("created_at", "aid")

    def get_queryset(self):
        return selectors.security_domains_for(self.request.user)

    @extend_schema(request=None, responses={202: CardJobSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-keys")
    def rotate_keys(self, request: Request, pk: str | None = None) -> Response:
        job = services.request_key_rotation(security_domain=self.get_object(), actor=acting_user(request))
        return Response(CardJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: CardJobSerializer})
    @action(detail=True, methods=["post"])
    def lock(self, request: Request, pk: str | None = None) -> Response:
        job = services.request_sd_lock(security_domain=self.get_object(), lock=True, actor=acting_user(request))
        return Response(CardJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=SecurityDomainSerializer)
    @action(detail=True, methods=["post"], url_path="reset-auth-failures")
    def reset_auth_failures(self, request: Request, pk: str | None = None) -> Response:
        sd = services.reset_auth_failures(security_domain=self.get_object(), actor=acting_user(request))
        return Response(SecurityDomainSerializer(sd).data)

    @extend_schema(request=None, responses={202: CardJobSerializer})
    @action(detail=True, methods=["post"])
    def unlock(self, request: Request, pk: str | None = None) -> Response:
        job = services.request_sd_lock(security_domain=self.get_object(), lock=False, actor=acting_user(request))
        return Response(CardJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class AppletInstanceSerializer(serializers.ModelSerializer):
    security_domain: serializers.SlugRelatedField[SecurityDomain] = serializers.SlugRelatedField(
        slug_field="aid", read_only=True
    )
    card = serializers.CharField(source="security_domain.card.cin", read_only=True)

    class Meta:
        model = AppletInstance
        fields = (
            "id",
            "card",
            "security_domain",
            "package_aid",
            "package_version",
            "module_aid",
            "instance_aid",
            "lifecycle",
            "installed_at",
        )


class AppletInstanceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Applet instances, as the platform last saw them on the card."""

    serializer_class = AppletInstanceSerializer
    permission_classes = (ActionRules,)
    filterset_fields = ("package_aid", "package_version", "lifecycle", "security_domain__card__cin")
    ordering_fields = ("installed_at", "instance_aid")

    def get_queryset(self):
        return selectors.applets_for(self.request.user)


class CardPackageSerializer(serializers.ModelSerializer):
    security_domain: serializers.SlugRelatedField[SecurityDomain] = serializers.SlugRelatedField(
        slug_field="aid", read_only=True
    )
    card = serializers.CharField(source="security_domain.card.cin", read_only=True)

    class Meta:
        model = CardPackage
        fields = ("id", "card", "security_domain", "package_aid", "package_version", "loaded_at")


class CardPackageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Load files (applet packages and libraries) on cards, as the platform last saw them."""

    serializer_class = CardPackageSerializer
    permission_classes = (ActionRules,)
    filterset_fields = ("package_aid", "package_version", "security_domain__card__cin")
    ordering_fields = ("loaded_at", "package_aid")

    def get_queryset(self):
        return selectors.packages_for(self.request.user)


class EnrollmentSerializer(serializers.ModelSerializer):
    card: serializers.SlugRelatedField[Card] = serializers.SlugRelatedField(slug_field="cin", read_only=True)
    bank: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    security_domain: serializers.SlugRelatedField[SecurityDomain] = serializers.SlugRelatedField(
        slug_field="aid", read_only=True
    )

    class Meta:
        model = Enrollment
        fields = ("id", "card", "bank", "status", "consent_text", "consented_at", "security_domain", "created_at")


class RequestEnrollmentSerializer(serializers.Serializer):
    card = serializers.CharField(help_text="CIN of your card")
    bank = serializers.SlugField(help_text="slug of the bank")
    consent_text = serializers.CharField(help_text="the text from the consent endpoint, as shown to you")
    accepted = serializers.BooleanField()


def citizen(who: Principal, request: Request, obj: Any) -> bool:
    return who.is_citizen


def enrollment_holder_or_agency(who: Principal, request: Request, obj: Any) -> bool:
    if obj is None:
        return who.is_citizen or who.agency_operator
    return obj.card.holder_id == who.user_id or who.agency_operator


class EnrollmentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Enrollments of banks on cards. Citizens add banks with consent and remove them (DELETE)."""

    serializer_class = EnrollmentSerializer
    permission_classes = (ActionRules,)
    action_rules = {"create": citizen, "consent": citizen, "destroy": enrollment_holder_or_agency}
    filterset_fields = ("status", "card__cin", "bank__slug")
    ordering_fields = ("created_at",)

    def get_queryset(self):
        return selectors.enrollments_for(self.request.user)

    def _own_card(self, cin: str) -> Card:
        return get_object_or_404(selectors.cards_for(acting_user(self.request)), cin=cin.upper())

    @extend_schema(
        parameters=[OpenApiParameter("card", str, required=True), OpenApiParameter("bank", str, required=True)],
        responses=inline_serializer("Consent", {"consent_text": serializers.CharField()}),
    )
    @action(detail=False, methods=["get"])
    def consent(self, request: Request) -> Response:
        """The exact text a citizen consents to before a bank is added to their card."""
        card = self._own_card(request.query_params.get("card", ""))
        bank = get_object_or_404(active_banks(), slug=request.query_params.get("bank", ""))
        return Response({"consent_text": services.consent_text_for(card, bank)})

    @extend_schema(request=RequestEnrollmentSerializer, responses={201: EnrollmentSerializer})
    def create(self, request: Request) -> Response:
        payload = RequestEnrollmentSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        card = self._own_card(data["card"])
        bank = active_banks().filter(slug=data["bank"]).first()
        if bank is None:
            raise serializers.ValidationError({"bank": ["no such bank"]})
        enrollment = services.request_enrollment(
            card=card,
            bank=bank,
            citizen=acting_user(request),
            consent_text=data["consent_text"],
            accepted=data["accepted"],
        )
        return Response(self.get_serializer(enrollment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={202: CardJobSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        job = services.request_removal(enrollment=self.get_object(), actor=acting_user(request))
        return Response(CardJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class CardJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Pending and finished card work."""

    serializer_class = CardJobSerializer
    permission_classes = (ActionRules,)
    filterset_fields = ("state", "kind", "card__cin")
    ordering_fields = ("created_at", "finished_at")

    def get_queryset(self):
        return selectors.jobs_for(self.request.user)
