"""Tasks of the issuers app: thin wrappers over services."""

from __future__ import annotations

from celery import shared_task

from issuers import key_services


@shared_task(name="issuers.check_key_services", acks_late=True)
def check_key_services() -> int:
    """Ask every active bank key service for its health (Celery beat, every minute); idempotent."""
    return key_services.check_all_key_services()
