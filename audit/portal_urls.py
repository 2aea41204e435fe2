"""Portal pages of the audit log (mounted at /audit/)."""

from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("", views.log_browser, name="log"),
    path("entries/<int:index>/", views.entry_detail, name="entry"),
    path("checkpoints/", views.checkpoints, name="checkpoints"),
    path("export/", views.export, name="export"),
    path("security/", views.security_events, name="security"),
]
