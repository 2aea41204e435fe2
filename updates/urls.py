"""REST API routes of the updates app (mounted under /api/v1/)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from updates import apis, personalization_apis, renewal_apis, repair_apis

router = SimpleRouter()
router.register("agent-credentials", apis.AgentCredentialViewSet, basename="agent-credential")
router.register("terminal-credentials", apis.TerminalCredentialViewSet, basename="terminal-credential")

urlpatterns = [
    path("personalization/", personalization_apis.PersonalizationApi.as_view(), name="personalization"),
    path("releases/<int:pk>/approve/", apis.ApproveReleaseApi.as_view(), name="release-approve"),
    path("releases/<int:pk>/reject/", apis.RejectReleaseApi.as_view(), name="release-reject"),
    path("releases/<int:pk>/dap-signature/", apis.ReleaseDapSignatureApi.as_view(), name="release-dap-signature"),
    path("organizations/<slug:slug>/release-policy/", apis.ReleasePolicyApi.as_view(), name="release-policy"),
    path("organizations/<slug:slug>/dap-key/", apis.BankDapKeyApi.as_view(), name="bank-dap-key"),
    path("code-signing/", apis.CodeSigningApi.as_view(), name="code-signing"),
    path("cards/<str:cin>/repairs/", repair_apis.CardRepairsApi.as_view(), name="card-repairs"),
    path("cards/<str:cin>/repairs/<int:pk>/execute/", repair_apis.RepairExecuteApi.as_view(), name="repair-execute"),
    path("cards/<str:cin>/repairs/<int:pk>/cancel/", repair_apis.RepairCancelApi.as_view(), name="repair-cancel"),
    path("cards/<str:cin>/repairs/<int:pk>/consent/", repair_apis.RepairConsentApi.as_view(), name="repair-consent"),
    path("renewals/", renewal_apis.RenewalsApi.as_view(), name="renewals"),
    path("cards/<str:cin>/renewal/", renewal_apis.CardRenewalApi.as_view(), name="card-renewal"),
    *router.urls,
]
urlpatterns += [path("", include("updates.rollout_urls"))]
