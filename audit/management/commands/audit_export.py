"""``python manage.py audit_export PATH``: write the audit log export (``ecard-audit-export/1``).

By default the current tree head is signed first (idempotent), so the export covers every entry
committed so far; ``--latest`` exports up to the latest existing checkpoint instead. ``-`` writes
to standard output. ``--from M`` writes a range export (entries M.. on, with the frontier at M in the
header; ``--to N`` ends it at the checkpoint of size N), which ``python -m audit.verify --since
STATE`` extends a previous verification with. Check the file with
``python -m audit.verify PATH --key VKEY``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import selectors, services
from ecard.errors import ServiceError


class Command(BaseCommand):
    help = "Write the audit log (entries, signed checkpoint, earlier checkpoints and proofs) as JSON Lines."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", metavar="PATH", help="file to write ('-' for standard output)")
        parser.add_argument(
            "--latest", action="store_true", help="export up to the latest checkpoint, do not sign a new one"
        )
        parser.add_argument("--from", dest="start", type=int, default=0, metavar="M", help="first entry to export")
        parser.add_argument(
            "--to", type=int, metavar="N", help="export up to the existing checkpoint of size N (entries < N)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["to"] is not None:
                checkpoint = selectors.checkpoints().filter(size=options["to"]).first()
                if checkpoint is None:
                    raise CommandError(f"there is no checkpoint of size {options['to']}")
            elif options["latest"]:
                checkpoint = selectors.latest_checkpoint()
            else:
                checkpoint = services.make_checkpoint()
            if checkpoint is None:
                raise CommandError("the log has no signed checkpoint yet (run without --latest)")
            start = options["start"]
            if not 0 <= start <= checkpoint.size:
                raise CommandError(f"--from must be between 0 and the checkpoint size {checkpoint.size}")
            if options["path"] == "-":
                services.write_export(sys.stdout, checkpoint=checkpoint, start=start)
                return
            target = Path(options["path"])
            # Write next to the target and rename: a reader never sees half an export.
            fd, tmp = tempfile.mkstemp(prefix=".audit-export-", dir=target.parent or Path("."))
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fp:
                    services.write_export(fp, checkpoint=checkpoint, start=start)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        vkey = services.log_verifier_key(create=False)
        self.stderr.write(f"wrote entries {start}..{checkpoint.size - 1} to {target}")
        self.stderr.write(f"verify with: python -m audit.verify {target} --key '{vkey}'")
