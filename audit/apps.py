from django.apps import AppConfig


class AuditConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_login_failed

        from audit import receivers

        user_login_failed.connect(receivers.login_failed, dispatch_uid="audit.security.login_failed")
