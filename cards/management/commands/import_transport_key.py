"""``python manage.py import_transport_key AGENCY --kcv KCV [--components N] [--kvn N]``: put a card
manufacturer's transport key into the agency's custody (docs/manufacturer-file.md).

The key is never an argument (arguments show in the process list and shell history): it is read
from standard input, as one hex value or as ``--components`` hex components, one per line, that are
XOR-ed together (each custodian types their own). The check value the manufacturer sent separately
must match; nothing of the key is printed, only its slot and check value.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cards.manufacturer import register_transport_key
from ecard.errors import ServiceError
from issuers.models import Organization


def _component(text: str, number: int) -> bytes:
    try:
        return bytes.fromhex(text.strip().replace(" ", ""))
    except ValueError:
        raise CommandError(f"component {number} is not hexadecimal") from None


class Command(BaseCommand):
    help = "Register a manufacturer's transport key (read from standard input) in the agency's custody."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agency", help="the agency's slug")
        parser.add_argument("--kcv", required=True, help="the key's check value (3 bytes hex), from the manufacturer")
        parser.add_argument("--components", type=int, default=1, help="how many key components to XOR (default 1)")
        parser.add_argument(
            "--kvn", type=lambda text: int(text, 16), default=None, help="slot, hex (default: next free)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        agency = Organization.objects.filter(slug=options["agency"], kind=Organization.Kind.AGENCY).first()
        if agency is None:
            raise CommandError(f"no agency {options['agency']!r}")
        count = options["components"]
        if not 1 <= count <= 9:
            raise CommandError("--components must be 1 to 9")
        key = b""
        for number in range(1, count + 1):
            if sys.stdin.isatty():
                self.stderr.write(f"component {number} of {count} (hex): ", ending="")
            part = _component(sys.stdin.readline(), number)
            if key and len(part) != len(key):
                raise CommandError(f"component {number} is not as long as the first")
            key = part if not key else bytes(a ^ b for a, b in zip(key, part, strict=True))
        try:
            keyset = register_transport_key(agency=agency, key=key, kcv=options["kcv"], kvn=options["kvn"])
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"transport key registered: KVN {keyset.kvn:02X}, check value {keyset.kcv_enc}")
