"""``python manage.py audit_export PATH``: write the audit log export (``ecard-audit-export/1``).

By default the current tree head is signed first (idempotent), so the export covers every entry
committed so far; ``--latest`` exports up to the latest existing checkpoint instead. ``-`` writes
to standard output. Check the file with ``python -m audit.verify PATH --key VKEY``.
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

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            checkpoint = selectors.latest_checkpoint() if options["latest"] else services.make_checkpoint()
            if checkpoint is None:
                raise CommandError("the log has no signed checkpoint yet (run without --latest)")
            if options["path"] == "-":
                services.write_export(sys.stdout, checkpoint=checkpoint)
                return
            target = Path(options["path"])
            # Write next to the target and rename: a reader never sees half an export.
            fd, tmp = tempfile.mkstemp(prefix=".audit-export-", dir=target.parent or Path("."))
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fp:
                    services.write_export(fp, checkpoint=checkpoint)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        vkey = services.log_verifier_key(create=False)
        self.stderr.write(f"wrote {checkpoint.size} entries to {target}")
        self.stderr.write(f"verify with: python -m audit.verify {target} --key '{vkey}'")
