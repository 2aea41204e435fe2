"""``python manage.py card_file USERNAME``: print the state file of the holder's emulated card.

Each emulated card's state file is named after its CIN (``ECARD_CARDS_DIR/<CIN>.json``), so the
demo scripts ask for it by holder: ``python -m agent --card-file "$(python manage.py card_file citizen1)"``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cards.services import live_card_of


class Command(BaseCommand):
    help = "Print the state file of a card holder's emulated card."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the card holder")

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        user = user_model.objects.filter(**{user_model.USERNAME_FIELD: options["username"]}).first()
        if user is None:
            raise CommandError(f"no user {options['username']!r}")
        card = live_card_of(user)
        if card is None or not card.state_file:
            raise CommandError(f"{options['username']} holds no emulated card")
        self.stdout.write(card.state_file)
