from django.apps import AppConfig


class UpdatesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "updates"
    verbose_name = "Updates and rollouts"

    def ready(self) -> None:
        # Imported here, not at the top: receivers import models, which exist only once apps are loaded.
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from cards.lifecycle import register_release_finder
        from cards.signals import job_queued, jobs_cancelled
        from issuers.models import Organization
        from issuers.services import register_release_resolver
        from updates import receivers, rollout_selectors
        from updates.models import AgentCredential
        from updates.signals import job_state_changed

        register_release_resolver(rollout_selectors.release_facts)  # the SSD template's default applets
        from updates.card_status import release_ids_of_versions

        register_release_finder(release_ids_of_versions)  # a replacement card's applets (cards.lifecycle)
        job_queued.connect(receivers.prepare_queued_job, dispatch_uid="updates.prepare_queued_job")
        job_state_changed.connect(receivers.report_rollout_job, dispatch_uid="updates.rollouts.job_state_changed")
        job_state_changed.connect(receivers.report_repair_job, dispatch_uid="updates.repair.job_state_changed")
        jobs_cancelled.connect(receivers.report_cancelled_jobs, dispatch_uid="updates.jobs_cancelled")
        post_save.connect(
            receivers.forget_suspended_organization, sender=Organization, dispatch_uid="updates.forget_suspended_org"
        )
        post_save.connect(
            receivers.forget_deactivated_user, sender=get_user_model(), dispatch_uid="updates.forget_deactivated_user"
        )
        post_delete.connect(
            receivers.forget_deleted_credential, sender=AgentCredential, dispatch_uid="updates.forget_deleted_cred"
        )
