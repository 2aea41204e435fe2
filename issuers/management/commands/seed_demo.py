"""Seed the local demo: users (and, as the registry grows, organisations and cards). Idempotent."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

DEMO_PASSWORD = "ecard-demo"  # noqa: S105 - documented local demo credential, never used in production
DEMO_USERS = ("agency", "alpha", "beta", "regulator", "citizen1", "citizen2", "citizen3")


class Command(BaseCommand):
    help = "Create the demo users and data for local use (idempotent)."

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        user_model = get_user_model()
        for username in DEMO_USERS:
            user, created = user_model.objects.get_or_create(username=username)
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
        self.stdout.write(self.style.SUCCESS(f"demo users ready: {', '.join(DEMO_USERS)}"))
