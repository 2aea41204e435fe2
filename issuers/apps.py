from django.apps import AppConfig


class IssuersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "issuers"
    verbose_name = "Issuers and key custody"

    def ready(self) -> None:
        # The audit log signs its checkpoints with a key in custody. Custody records its events in the
        # log, so audit cannot import it: the key holder registers itself (docs/ARCHITECTURE.md).
        # Imported here, not at the top: these modules import models, which exist once apps are loaded.
        from audit.signing import register_signer
        from ecard.principals import register_resolver
        from issuers.log_signing import CustodyCheckpointSigner
        from issuers.roles import principal

        register_signer(CustodyCheckpointSigner())
        # The core and audit scope reads by the caller's principal; memberships are issuers' to read.
        register_resolver(principal)
