"""REST API routes of the audit app (mounted under /api/v1/)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from audit import apis

router = SimpleRouter()
router.register("audit/entries", apis.EntryViewSet, basename="audit-entry")
router.register("audit/checkpoints", apis.CheckpointViewSet, basename="audit-checkpoint")
router.register("security/events", apis.SecurityEventViewSet, basename="security-event")

urlpatterns = [
    # the documented form, without a trailing slash (the router's form with one works too)
    path(
        "audit/entries/<int:index>/proof",
        apis.EntryProofViewSet.as_view({"get": "proof"}),
        name="audit-entry-proof-noslash",
    ),
    path("audit/log", apis.LogView.as_view(), name="audit-log"),
    path("audit/consistency", apis.ConsistencyView.as_view(), name="audit-consistency"),
    path("audit/export", apis.ExportView.as_view(), name="audit-export"),
    *router.urls,
]
