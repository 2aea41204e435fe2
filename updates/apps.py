from django.apps import AppConfig


class UpdatesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "updates"
    verbose_name = "Updates and rollouts"

    def ready(self) -> None:
        # Imported here, not at the top: receivers import models, which exist only once apps are loaded.
        from cards.signals import job_queued
        from updates import receivers
        from updates.signals import job_state_changed

        job_queued.connect(receivers.prepare_queued_job, dispatch_uid="updates.prepare_queued_job")
        job_state_changed.connect(receivers.report_rollout_job, dispatch_uid="updates.rollouts.job_state_changed")
