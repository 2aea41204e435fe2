"""Application configs of the project package itself."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class EcardAdminConfig(AdminConfig):
    """Django's admin with the platform's site: the portal's login (throttled, second factor) and a
    session that passed the second factor (:class:`portal.admin_site.EcardAdminSite`)."""

    default_site = "portal.admin_site.EcardAdminSite"
