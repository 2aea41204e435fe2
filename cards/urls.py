"""REST API routes of the cards app (mounted under /api/v1/)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from cards import apis, lifecycle_apis, manufacturer_apis, validity_apis

router = SimpleRouter()
router.register("cards", apis.CardViewSet, basename="card")
router.register("security-domains", apis.SecurityDomainViewSet, basename="security-domain")
router.register("applets", apis.AppletInstanceViewSet, basename="applet")
router.register("packages", apis.CardPackageViewSet, basename="package")
router.register("enrollments", apis.EnrollmentViewSet, basename="enrollment")
router.register("jobs", apis.CardJobViewSet, basename="job")
router.register("manufacturer-batches", manufacturer_apis.ManufacturerBatchViewSet, basename="manufacturer-batch")

urlpatterns = [
    path("validity-policy/", validity_apis.ValidityPolicyApi.as_view(), name="validity-policy"),
    *router.urls,
    path("cards/<str:cin>/block/", lifecycle_apis.BlockCardApi.as_view(), name="card-block"),
    path("cards/<str:cin>/unblock/", lifecycle_apis.UnblockCardApi.as_view(), name="card-unblock"),
    path("cards/<str:cin>/replace/", lifecycle_apis.ReplaceCardApi.as_view(), name="card-replace"),
    path("notices/", lifecycle_apis.BankNoticeListApi.as_view(), name="bank-notices"),
    path("webhooks/<slug:slug>/", lifecycle_apis.WebhookApi.as_view(), name="bank-webhook"),
]
