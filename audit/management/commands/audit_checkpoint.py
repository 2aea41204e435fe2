"""``python manage.py audit_checkpoint``: sign the current tree head now (idempotent) and print it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import services
from ecard.errors import ServiceError


class Command(BaseCommand):
    help = "Sign a checkpoint of the audit log (nothing new when the log has not grown)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--vkey", action="store_true", help="also print the log's verifier key")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            checkpoint, created = services.ensure_checkpoint()
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"{'signed' if created else 'unchanged'}: checkpoint at size {checkpoint.size}")
        if options["vkey"]:
            self.stderr.write(f"verifier key: {services.log_verifier_key(create=False)}")
        self.stdout.write(checkpoint.text, ending="")
