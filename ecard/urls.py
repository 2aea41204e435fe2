"""Top-level URLs: portal at /, REST API under /api/v1/, OpenAPI at /api/schema/."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from ecard import views

api_v1 = [
    path("", include("issuers.urls")),
    path("", include("cards.urls")),
    path("", include("updates.urls")),
    path("", include("audit.urls")),
]

urlpatterns = [
    path("api/v1/", include("updates.relay_urls")),  # first: the relay's requests are the most frequent
    path("", include("portal.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("audit/", include("audit.portal_urls")),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file: no inline script, so CSP can forbid them.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]

handler400 = "ecard.views.handler400"
handler403 = "ecard.views.handler403"
handler404 = "ecard.views.handler404"
handler500 = "ecard.views.handler500"
