"""REST API routes of the updates app (mounted under /api/v1/)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from updates import apis, personalization_apis

router = SimpleRouter()
router.register("agent-credentials", apis.AgentCredentialViewSet, basename="agent-credential")
router.register("terminal-credentials", apis.TerminalCredentialViewSet, basename="terminal-credential")

urlpatterns = [
    path("relay/sessions/", apis.RelaySessionsApi.as_view(), name="relay-sessions"),
    path("relay/sessions/<uuid:session_id>/exchanges/", apis.RelayExchangeApi.as_view(), name="relay-exchange"),
    path("personalization/", personalization_apis.PersonalizationApi.as_view(), name="personalization"),
    *router.urls,
]
urlpatterns += [path("", include("updates.rollout_urls"))]
