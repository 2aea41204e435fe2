"""``python manage.py agent_token USERNAME [--name DEVICE]``: a new agent credential for a card holder.

The token is printed once on stdout (only its hash is stored); revoke it in the portal or with
``POST /api/v1/agent-credentials/<id>/revoke/``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ecard.errors import ServiceError
from updates import services


class Command(BaseCommand):
    help = "Issue a new agent (device) credential for a card holder and print its token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the card holder")
        parser.add_argument("--name", default="device", help="device name shown in the portal (default: device)")

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: options["username"]})
        except user_model.DoesNotExist:
            raise CommandError(f"no user {options['username']!r}") from None
        try:
            credential, token = services.issue_agent_credential(user=user, name=options["name"])
        except ServiceError as exc:
            raise CommandError(f"{options['username']}: {exc.message}") from exc
        self.stderr.write(f"credential {credential.key_id} ({credential.name}) issued for {options['username']}")
        self.stdout.write(token)
