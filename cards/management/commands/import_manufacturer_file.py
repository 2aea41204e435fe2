"""``python manage.py import_manufacturer_file AGENCY FILE``: import a card manufacturer's
personalisation file (docs/manufacturer-file.md), all its cards or none; the lines at fault are
printed when it is refused. For files above the web upload limit (``ECARD_MAX_UPLOAD_BYTES``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cards.manufacturer import MAX_FILE_BYTES, import_manufacturer_file
from ecard.errors import ServiceError
from issuers.models import Organization


class Command(BaseCommand):
    help = "Import a card manufacturer's personalisation file (all cards or none)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agency", help="the agency's slug")
        parser.add_argument("file", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        agency = Organization.objects.filter(slug=options["agency"], kind=Organization.Kind.AGENCY).first()
        if agency is None:
            raise CommandError(f"no agency {options['agency']!r}")
        path: Path = options["file"]
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise CommandError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror}") from None
        try:
            batch = import_manufacturer_file(agency=agency, data=data, file_name=path.name)
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"batch {batch.pk}: {batch.card_count} cards from {batch.manufacturer} imported")
