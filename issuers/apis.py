"""REST API views of the issuers app: thin, over selectors and services."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ecard.api import ActionRules, agency_operator
from ecard.errors import ServiceError
from ecard.requests import acting_user
from issuers import key_services, selectors, services
from issuers.models import AidRange, Invitation, Membership, Organization, SharedMemberApproval, SsdTemplate
from issuers.roles import Principal, principal


class WhoAmIApi(APIView):
    """The signed-in user (session or token) and their organisations."""

    @extend_schema(
        responses=inline_serializer(
            "WhoAmI",
            {
                "username": serializers.CharField(),
                "organizations": serializers.ListField(child=serializers.DictField()),
                "is_citizen": serializers.BooleanField(),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.user_profile(acting_user(request)))


class AidRangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = AidRange
        fields = ("rid", "pix_prefix", "prefix")


class SsdTemplateSerializer(serializers.ModelSerializer):
    class Meta:
        model = SsdTemplate
        fields = ("management", "scp", "scp_i", "key_algorithm", "key_length", "ssd_aid_suffix", "default_applets")


class OrganizationSerializer(serializers.ModelSerializer):
    aid_ranges = serializers.SerializerMethodField()
    ssd_template = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = ("id", "slug", "name", "kind", "is_active", "created_at", "aid_ranges", "ssd_template")

    def _details_visible(self, organization: Organization) -> bool:
        return selectors.organization_details_visible(acting_user(self.context["request"]), organization)

    def get_aid_ranges(self, organization: Organization) -> list[dict[str, Any]] | None:
        if not self._details_visible(organization):
            return None
        # many=True answers a ReturnList; the stubs type every .data as a dict.
        return cast(list[dict[str, Any]], AidRangeSerializer(organization.aid_ranges.all(), many=True).data)

    def get_ssd_template(self, organization: Organization) -> dict[str, Any] | None:
        template = getattr(organization, "ssd_template", None)
        if template is None or not self._details_visible(organization):
            return None
        return SsdTemplateSerializer(template).data


class AdmitBankSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=64, required=False, default="")
    rid = serializers.CharField(max_length=10, help_text="5-byte RID, hex")
    pix_prefix = serializers.CharField(max_length=22, required=False, default="", allow_blank=True)
    management = serializers.ChoiceField(choices=SsdTemplate.Management.choices, default="dm")
    scp = serializers.ChoiceField(choices=[(2, "SCP02"), (3, "SCP03")], default=3)
    key_length = serializers.ChoiceField(choices=[16, 24, 32], default=16)


class OrganizationUpdateSerializer(serializers.Serializer):
    is_active = serializers.BooleanField()


def agency_admin(who: Principal, request: Request, obj: Any) -> bool:
    return any(who.has_role(org_id, Membership.Role.ADMIN) for org_id in who.org_ids(Organization.Kind.AGENCY))


class OrganizationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Organisations. The agency admits banks (create); everyone sees what their role allows."""

    serializer_class = OrganizationSerializer
    permission_classes = (ActionRules,)
    action_rules = {"create": agency_operator, "set_active": agency_admin}
    filterset_fields = ("kind", "is_active", "slug")
    ordering_fields = ("name", "created_at")

    def get_queryset(self):
        return selectors.organizations_for(self.request.user).prefetch_related("aid_ranges")

    @extend_schema(request=AdmitBankSerializer, responses={201: OrganizationSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = AdmitBankSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        bank = services.admit_bank(actor=acting_user(request), **payload.validated_data)
        return Response(self.get_serializer(bank).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=OrganizationUpdateSerializer, responses=OrganizationSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.action = "set_active"
        self.check_permissions(request)
        organization = self.get_object()
        payload = OrganizationUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        organization = services.set_organization_active(
            organization=organization, is_active=payload.validated_data["is_active"], actor=acting_user(request)
        )
        return Response(self.get_serializer(organization).data)


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = Membership
        fields = ("id", "username", "organization", "role", "created_at")


class AddMemberSerializer(serializers.Serializer):
    organization = serializers.SlugField()
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    invited_by = serializers.SerializerMethodField()

    class Meta:
        model = Invitation
        fields = ("id", "organization", "username", "role", "state", "invited_by", "created_at", "decided_at")

    def get_invited_by(self, invitation: Invitation) -> str | None:
        return invitation.invited_by.get_username() if invitation.invited_by is not None else None


def org_admin_of_target(who: Principal, request: Request, obj: Any) -> bool:
    """Admins manage their own organisation's members and invitations."""
    if obj is None:
        return any(role == Membership.Role.ADMIN for role in who.roles.values())
    return who.has_role(obj.organization_id, Membership.Role.ADMIN)


def invitee(who: Principal, request: Request, obj: Any) -> bool:
    """Only the invited user answers an invitation."""
    return who.is_authenticated if obj is None else obj.user_id == who.user_id


def _user_named(username: str) -> Any:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise serializers.ValidationError({"username": ["no such user"]})
    return user


def _invite(request: Request) -> Invitation:
    """POST /members/ and POST /invitations/: an admin invites; the membership exists only once
    the invited user accepts (POST /invitations/{id}/accept/)."""
    payload = AddMemberSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    data = payload.validated_data
    organization = selectors.organizations_for(acting_user(request)).filter(slug=data["organization"]).first()
    if organization is None or not principal(acting_user(request)).has_role(organization.pk, Membership.Role.ADMIN):
        raise exceptions.PermissionDenied("You administer no organisation with that slug.")
    user = get_user_model().objects.filter(username=data["username"]).first()
    if user is None:
        raise services.not_invitable()  # the same answer as for an account that may not be invited
    return services.invite_member(organization=organization, user=user, role=data["role"], actor=acting_user(request))


class MembershipViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Members of organisations with their roles. Adding a member (POST) sends an invitation
    (202); the user becomes a member when they accept it."""

    serializer_class = MembershipSerializer
    permission_classes = (ActionRules,)
    action_rules = {"create": org_admin_of_target, "destroy": org_admin_of_target}
    filterset_fields = ("role", "organization__slug")
    ordering_fields = ("created_at",)

    def get_queryset(self):
        return selectors.memberships_for(self.request.user)

    @extend_schema(request=AddMemberSerializer, responses={202: InvitationSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        invitation = _invite(request)
        return Response(
            InvitationSerializer(invitation).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/invitations/{invitation.pk}/"},
        )

    def perform_destroy(self, instance: Membership) -> None:
        services.remove_member(membership=instance, actor=acting_user(self.request))


class InvitationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Invitations to organisations: an admin invites (create) or revokes; the invited user
    accepts or declines. A pending invitation grants nothing."""

    serializer_class = InvitationSerializer
    permission_classes = (ActionRules,)
    action_rules = {
        "create": org_admin_of_target,
        "revoke": org_admin_of_target,
        "accept": invitee,
        "decline": invitee,
    }
    filterset_fields = ("state", "organization__slug")
    ordering_fields = ("created_at",)

    def get_queryset(self):
        return selectors.invitations_for(self.request.user)

    @extend_schema(request=AddMemberSerializer, responses={201: InvitationSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(InvitationSerializer(_invite(request)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=MembershipSerializer)
    @action(detail=True, methods=["post"])
    def accept(self, request: Request, pk: str | None = None) -> Response:
        membership = services.accept_invitation(invitation=self.get_object(), user=acting_user(request))
        return Response(MembershipSerializer(membership).data)

    @extend_schema(request=None, responses=InvitationSerializer)
    @action(detail=True, methods=["post"])
    def decline(self, request: Request, pk: str | None = None) -> Response:
        return Response(
            InvitationSerializer(
                services.decline_invitation(invitation=self.get_object(), user=acting_user(request))
            ).data
        )

    @extend_schema(request=None, responses=InvitationSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        return Response(
            InvitationSerializer(
                services.revoke_invitation(invitation=self.get_object(), actor=acting_user(request))
            ).data
        )


class SharedMemberApprovalSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = SharedMemberApproval
        fields = ("id", "organization", "username", "created_at")


class ApproveSharedMemberSerializer(serializers.Serializer):
    organization = serializers.SlugField(help_text="the bank the user may also join")
    username = serializers.CharField(max_length=150)


class SharedMemberApprovalViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Agency approvals that let a member of one bank be invited to another bank."""

    serializer_class = SharedMemberApprovalSerializer
    permission_classes = (ActionRules,)
    action_rules = {"create": agency_operator}
    ordering_fields = ("created_at",)

    def get_queryset(self):
        return selectors.shared_member_approvals_for(self.request.user)

    @extend_schema(request=ApproveSharedMemberSerializer, responses={201: SharedMemberApprovalSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = ApproveSharedMemberSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        bank = Organization.objects.filter(slug=data["organization"], kind=Organization.Kind.BANK).first()
        if bank is None:
            raise serializers.ValidationError({"organization": ["no such bank"]})
        approval = services.approve_shared_member(
            organization=bank, user=_user_named(data["username"]), actor=acting_user(request)
        )
        return Response(self.get_serializer(approval).data, status=status.HTTP_201_CREATED)


class KeySetSerializer(serializers.Serializer):
    """Key set metadata. Never key bytes: the model's wrapped blob is not a field here at all."""

    id = serializers.IntegerField()
    organization = serializers.CharField(source="organization.slug")
    card_cin = serializers.CharField()
    sd_aid = serializers.CharField()
    kvn = serializers.IntegerField()
    algorithm = serializers.CharField()
    purpose = serializers.CharField()
    state = serializers.CharField()
    created_at = serializers.DateTimeField()
    rotated_at = serializers.DateTimeField(allow_null=True)
    key_length = serializers.IntegerField(required=False)
    kcv = serializers.DictField(child=serializers.CharField(), required=False)
    public_key = serializers.CharField(required=False)

    DETAILS = ("key_length", "kcv", "public_key")

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if selectors.key_set_details_visible(acting_user(self.context["request"]), instance.organization_id):
            data["key_length"] = instance.key_length
            data["kcv"] = {
                name: value
                for name, value in (("enc", instance.kcv_enc), ("mac", instance.kcv_mac), ("dek", instance.kcv_dek))
                if value
            }
            data["public_key"] = instance.public_key
        else:
            for name in self.DETAILS:
                data.pop(name, None)
        return data


class KeySetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Key set metadata: KVN, algorithm, purpose, dates; KCVs and lengths for the owner and regulators."""

    serializer_class = KeySetSerializer
    permission_classes = (ActionRules,)
    filterset_fields = ("purpose", "state", "card_cin", "sd_aid", "kvn", "organization__slug")
    ordering_fields = ("created_at", "kvn")

    def get_queryset(self):
        return selectors.key_sets_for(self.request.user)


# --------------------------------------------------------------------------- bank key services


class KeyServiceStatusSerializer(serializers.Serializer):
    """A bank's key service as the platform last saw it (docs/keyservice.md, "Onboarding")."""

    bank = serializers.CharField()
    registered = serializers.BooleanField()
    # Every field below is null while no service is registered.
    is_active = serializers.BooleanField(allow_null=True)
    endpoint = serializers.CharField(allow_null=True)
    certificate_sha256 = serializers.CharField(allow_null=True, help_text="SHA-256 of the pinned TLS certificate")
    registered_at = serializers.DateTimeField(allow_null=True)
    registered_by = serializers.CharField(allow_null=True)
    reachable = serializers.BooleanField(allow_null=True, help_text="null: not checked yet")
    checked_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_null=True, allow_blank=True)
    journal_size = serializers.IntegerField(allow_null=True)
    oce_certificate_issued = serializers.BooleanField(allow_null=True)
    oce_not_after = serializers.DateTimeField(allow_null=True)
    oce_days_left = serializers.IntegerField(allow_null=True)
    oce_expires_soon = serializers.BooleanField(allow_null=True, help_text="the OCE certificate expires within 30 days")


class RegisterKeyServiceSerializer(serializers.Serializer):
    endpoint = serializers.CharField(max_length=300, help_text="https://host:port of the bank's key service")
    service_certificate = serializers.CharField(
        max_length=key_services.MAX_PEM_CHARS, help_text="the service's TLS certificate (PEM), pinned by the platform"
    )


class PlatformIdentitySerializer(serializers.Serializer):
    certificate = serializers.CharField(help_text="the platform's TLS client certificate (PEM) for banks to pin")
    sha256 = serializers.CharField(help_text="SHA-256 of the certificate (DER), hex")


def _visible_bank(request: Request, slug: str) -> Organization:
    """The bank ``slug`` if the caller may see its key service, else 404 (existence does not leak)."""
    user = acting_user(request)
    bank = selectors.organizations_for(user).filter(slug=slug, kind=Organization.Kind.BANK).first()
    if bank is None or not selectors.key_service_visible(user, bank):
        raise exceptions.NotFound("no such bank")
    return bank


def _status(bank: Organization) -> Response:
    return Response(KeyServiceStatusSerializer(selectors.key_service_status(bank)).data)


class KeyServiceApi(APIView):
    """A bank's key service: its status (the agency's staff, regulators, the bank's members) and its
    registration by an agency administrator (PUT: endpoint and the certificate to pin)."""

    @extend_schema(responses=KeyServiceStatusSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return _status(_visible_bank(request, slug))

    @extend_schema(request=RegisterKeyServiceSerializer, responses=KeyServiceStatusSerializer)
    def put(self, request: Request, slug: str) -> Response:
        bank = _visible_bank(request, slug)
        if not agency_admin(principal(acting_user(request)), request, bank):
            raise exceptions.PermissionDenied("only an agency administrator registers a bank's key service")
        payload = RegisterKeyServiceSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        key_services.register_key_service(
            organization=bank,
            endpoint=payload.validated_data["endpoint"],
            service_certificate_pem=payload.validated_data["service_certificate"],
            actor=acting_user(request),
        )
        return _status(bank)


class KeyServiceCheckApi(APIView):
    """Ask the bank's key service for its health now (agency operators, the bank's admins and operators)."""

    @extend_schema(request=None, responses=KeyServiceStatusSerializer)
    def post(self, request: Request, slug: str) -> Response:
        bank = _visible_bank(request, slug)
        who = principal(acting_user(request))
        if not (who.agency_operator or who.can_operate(bank.pk)):
            raise exceptions.PermissionDenied("your role may not check the key service")
        key_services.check_key_service(key_services.active_service(bank))
        return _status(bank)


class KeyServiceOceCertificateApi(APIView):
    """Rotate the bank's SCP11 OCE certificate: the service makes a new key and request, the agency's
    OCE CA signs it, the service installs it (the bank's admins, agency admins)."""

    @extend_schema(request=None, responses=KeyServiceStatusSerializer)
    def post(self, request: Request, slug: str) -> Response:
        bank = _visible_bank(request, slug)
        who = principal(acting_user(request))
        if not (agency_admin(who, request, bank) or who.has_role(bank.pk, Membership.Role.ADMIN)):
            raise exceptions.PermissionDenied("only the bank's or the agency's administrators rotate the certificate")
        key_services.rotate_oce_certificate(organization=bank, actor=acting_user(request))
        return _status(bank)


class PlatformIdentityApi(APIView):
    """The platform's TLS client certificate, which each bank's key service pins (bank and agency staff)."""

    @extend_schema(responses=PlatformIdentitySerializer)
    def get(self, request: Request) -> Response:
        who = principal(acting_user(request))
        if not (who.is_agency or who.bank_ids):
            raise exceptions.PermissionDenied("for the staff of banks and of the agency")
        identity = key_services.platform_identity()
        return Response({"certificate": identity.certificate_pem, "sha256": identity.sha256})


# --------------------------------------------------------------------------- a bank's SSD template


class DefaultAppletSerializer(serializers.Serializer):
    release_id = serializers.IntegerField(min_value=1, help_text="an approved release of the bank")
    instance_aid = serializers.CharField(max_length=40, help_text="in the bank's AID range, 5 to 16 bytes hex")
    module_aid = serializers.CharField(
        max_length=40, required=False, allow_blank=True, help_text="one of the release's applets (default: the first)"
    )
    install_params = serializers.CharField(
        max_length=140, required=False, allow_blank=True, default="", help_text="the C9 value, hex, at most 64 bytes"
    )
    privileges = serializers.CharField(
        max_length=8, required=False, allow_blank=True, default="00", help_text="1 or 3 bytes, hex"
    )
    name = serializers.CharField(max_length=60, required=False, allow_blank=True)


class TemplateEditSerializer(serializers.Serializer):
    scp = serializers.IntegerField(
        required=False, min_value=0, max_value=255, help_text="2 (SCP02), 3 (SCP03) or 17 (0x11, SCP11)"
    )
    default_applets = DefaultAppletSerializer(many=True, required=False)


def template_body(template: SsdTemplate) -> dict[str, Any]:
    """The template as the API shows it: the stored applet entries with ``release_id``."""
    return {
        **SsdTemplateSerializer(template).data,
        "default_applets": [
            {
                "release_id": a.get("release"),
                "instance_aid": a.get("instance_aid", ""),
                "module_aid": a.get("module_aid", ""),
                "install_params": a.get("install_params", ""),
                "privileges": a.get("privileges", "00"),
                "package_aid": a.get("package_aid", ""),
                "name": a.get("name", ""),
            }
            for a in template.default_applets
        ],
    }


class SsdTemplateApi(APIView):
    """A bank's SSD template: the SCP its new security domains speak and the applets a new
    enrollment gets (GET: the bank's members, the agency, regulators; PUT: the bank's operators).
    Cards already enrolled are not touched."""

    def _template(self, request: Request, slug: str) -> SsdTemplate:
        user = acting_user(request)
        bank = selectors.organizations_for(user).filter(slug=slug, kind=Organization.Kind.BANK).first()
        template = getattr(bank, "ssd_template", None) if bank is not None else None
        if bank is None or template is None or not selectors.organization_details_visible(user, bank):
            raise exceptions.NotFound("no such bank")
        return template

    @extend_schema(responses=inline_serializer("SsdTemplateBody", {"scp": serializers.IntegerField()}))
    def get(self, request: Request, slug: str) -> Response:
        return Response(template_body(self._template(request, slug)))

    @extend_schema(request=TemplateEditSerializer, responses=inline_serializer("SsdTemplateEdited", {}))
    def put(self, request: Request, slug: str) -> Response:
        template = self._template(request, slug)
        payload = TemplateEditSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        try:
            template = services.update_ssd_template(
                organization=template.organization,
                actor=acting_user(request),
                scp=data.get("scp"),
                default_applets=[dict(a) for a in data["default_applets"]] if "default_applets" in data else None,
            )
        except ServiceError as exc:
            if exc.code == "forbidden":
                raise exceptions.PermissionDenied(exc.message) from exc
            raise
        return Response(template_body(template))
