"""REST API routes of the issuers app (mounted under /api/v1/)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from issuers import apis

router = SimpleRouter()
router.register("organizations", apis.OrganizationViewSet, basename="organization")
router.register("members", apis.MembershipViewSet, basename="member")
router.register("invitations", apis.InvitationViewSet, basename="invitation")
router.register("sharing-approvals", apis.SharedMemberApprovalViewSet, basename="sharing-approval")
router.register("key-sets", apis.KeySetViewSet, basename="key-set")

urlpatterns = [
    path("whoami/", apis.WhoAmIApi.as_view(), name="whoami"),
    path("organizations/<slug:slug>/ssd-template/", apis.SsdTemplateApi.as_view(), name="ssd-template"),
    path("organizations/<slug:slug>/key-service/", apis.KeyServiceApi.as_view(), name="key-service"),
    path("organizations/<slug:slug>/key-service/check/", apis.KeyServiceCheckApi.as_view(), name="key-service-check"),
    path(
        "organizations/<slug:slug>/key-service/oce-certificate/",
        apis.KeyServiceOceCertificateApi.as_view(),
        name="key-service-oce-certificate",
    ),
    path("key-service/platform-identity/", apis.PlatformIdentityApi.as_view(), name="key-service-platform-identity"),
    *router.urls,
]
