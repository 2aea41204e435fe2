from django.apps import AppConfig


class IssuersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "issuers"
    verbose_name = "Issuers and key custody"
