"""The relay's two routes (DESIGN.md §6), mounted under /api/v1/ ahead of every other route: the
hottest requests of the platform are resolved without trying the portal's and the API's patterns
first (Django tries the patterns in order)."""

from django.urls import path

from updates import apis

urlpatterns = [
    path("relay/sessions/", apis.RelaySessionsApi.as_view(), name="relay-sessions"),
    path("relay/sessions/<uuid:session_id>/exchanges/", apis.RelayExchangeApi.as_view(), name="relay-exchange"),
]
