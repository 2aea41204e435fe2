"""Rotate key-encryption keys: ``python manage.py rotate_kek ORG_SLUG [...]`` or ``--all``.

Each organisation is rotated in its own transaction (:func:`issuers.custody.rotate_kek`): a new
KEK version is created, every key set of the organisation re-wrapped under it, and the old KEK
destroyed. Services keep running meanwhile. Prints versions and counts, never key material.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from issuers.custody import CustodyError, rotate_kek
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.models import Organization


class Command(BaseCommand):
    help = "Re-wrap every key of the given organisations (or --all) under a new key-encryption key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", metavar="ORG_SLUG", help="organisation slug(s)")
        parser.add_argument(
            "--all", action="store_true", dest="all_orgs", help="every organisation that has a KEK or keys"
        )
        parser.add_argument(
            "--backend",
            choices=("software", "pkcs11"),
            default=None,
            help="where the new KEK is created (default: ECARD_KEY_BACKEND)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slugs: list[str] = options["slugs"]
        if bool(slugs) == bool(options["all_orgs"]):
            raise CommandError("give ORG_SLUG(s) or --all (not both)")
        if options["all_orgs"]:
            with_keys = set(KeyEncryptionKey.objects.values_list("organization_id", flat=True))
            with_keys |= set(KeySet.objects.values_list("organization_id", flat=True))
            orgs = list(Organization.objects.filter(pk__in=with_keys).order_by("slug"))
        else:
            found = {o.slug: o for o in Organization.objects.filter(slug__in=slugs)}
            missing = [s for s in slugs if s not in found]
            if missing:
                raise CommandError(f"unknown organisation(s): {', '.join(missing)}")
            orgs = [found[s] for s in slugs]
        failed: list[str] = []
        for org in orgs:
            try:
                kek = rotate_kek(org, backend=options["backend"])
            except CustodyError as exc:
                failed.append(org.slug)
                self.stderr.write(f"{org.slug}: rotation failed and was rolled back ({exc})")
                continue
            count = KeySet.objects.filter(organization=org, kek=kek).count()
            self.stdout.write(f"{org.slug}: KEK v{kek.version} ({kek.backend}), {count} key set(s) re-wrapped")
        if failed:
            raise CommandError(f"rotation failed for: {', '.join(failed)} (their keys are unchanged)")
        self.stdout.write(self.style.SUCCESS(f"rotated {len(orgs)} organisation(s)"))
