"""Seed the local demo (idempotent): the agency, Alpha and Beta banks with SSD templates, keys and
applet releases, a regulator, three citizens with emulated cards, and one pending enrollment.

Demo users (local use only; README), password ``ecard-demo``: agency, alpha, beta, regulator,
citizen1, citizen2, citizen3. Each demo card's state file is ``var/cards/<CIN>.json``
(``manage.py card_file citizen1`` prints it).
"""

from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from cards import services as card_services
from cards.models import Card, Enrollment
from demo import key_services
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from updates.demo_cap import build_cap
from updates.models import Release
from updates.releases import create_release

DEMO_PASSWORD = "ecard-demo"  # noqa: S105 - documented local demo credential, never used in production
DEMO_USERS = ("agency", "alpha", "beta", "regulator", "citizen1", "citizen2", "citizen3")

# Proprietary RIDs (ISO 7816-5 category F): "F0" + the bank's name in ASCII.
BANKS = (
    {"name": "Alpha Bank", "slug": "alpha", "rid": "F0414C5048", "user": "alpha", "app": "Alpha Wallet", "port": 0},
    {"name": "Beta Bank", "slug": "beta", "rid": "F042455441", "user": "beta", "app": "Beta Pay", "port": 1},
)
# Each demo bank's key service listens on ECARD_DEMO_KEYSERVICE_PORT + its offset (8551, 8552 by default).
KEYSERVICE_PORT = "8551"


def package_aid(rid: str) -> str:
    return rid + "01"


def applet_aid(rid: str) -> str:
    return rid + "0101"


def instance_aid(rid: str) -> str:
    return rid + "010101"


class Command(BaseCommand):
    help = "Create the demo organisations, users, keys, releases and emulated cards (idempotent)."

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        users = {name: self._user(name) for name in DEMO_USERS}
        agency = self._org("National Card Agency", "agency", Organization.Kind.AGENCY)
        regulator = self._org("Banking Regulator", "regulator", Organization.Kind.REGULATOR)
        self._member(agency, users["agency"], Membership.Role.ADMIN)
        self._member(regulator, users["regulator"], Membership.Role.AUDITOR)
        for spec in BANKS:
            bank = Organization.objects.filter(slug=spec["slug"]).first()
            if bank is None:
                bank = issuer_services.admit_bank(name=spec["name"], slug=spec["slug"], rid=spec["rid"])
            self._member(bank, users[spec["user"]], Membership.Role.ADMIN)
            release = self._release(bank, spec, (1, 0), users[spec["user"]])
            self._release(bank, spec, (2, 0), users[spec["user"]], changelog="Contactless limits, faster PIN check")
            template = bank.ssd_template
            wanted = [{"release": release.pk, "instance_aid": instance_aid(spec["rid"]), "name": spec["app"]}]
            if template.default_applets != wanted:
                template.default_applets = wanted
                template.save(update_fields=["default_applets"])
            # the bank's own key service: its keys never reach the platform (docs/keyservice.md)
            port = int(os.environ.get("ECARD_DEMO_KEYSERVICE_PORT", KEYSERVICE_PORT)) + int(spec["port"])
            key_services.provision(bank, agency, port=port, approver=spec["user"])
        for number in (1, 2, 3):
            citizen = users[f"citizen{number}"]
            if not citizen.cards.exists():
                card_services.issue_card(agency=agency, holder=citizen, emulated=True)
        card = Card.objects.get(holder=users["citizen1"])
        alpha = Organization.objects.get(slug="alpha")
        if not Enrollment.objects.filter(card=card, bank=alpha).exists():
            card_services.request_enrollment(
                card=card,
                bank=alpha,
                citizen=users["citizen1"],
                consent_text=card_services.consent_text_for(card, alpha),
                accepted=True,
            )
        self.stdout.write(self.style.SUCCESS(f"demo ready: users {', '.join(DEMO_USERS)} (password {DEMO_PASSWORD})"))
        for citizen in ("citizen1", "citizen2", "citizen3"):
            self.stdout.write(f"  {citizen}: card {Card.objects.get(holder=users[citizen]).state_file}")

    def _user(self, username: str):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
        return user

    def _org(self, name: str, slug: str, kind: str) -> Organization:
        existing = Organization.objects.filter(slug=slug).first()
        return existing or issuer_services.create_organization(name=name, slug=slug, kind=kind)

    def _member(self, org: Organization, user, role: str) -> None:
        if not Membership.objects.filter(organization=org, user=user).exists():
            issuer_services.add_member(organization=org, user=user, role=role)

    def _release(self, bank: Organization, spec: dict[str, str], version: tuple[int, int], actor, changelog=""):
        existing = Release.objects.filter(
            bank=bank, package_aid=package_aid(spec["rid"]), package_version=f"{version[0]}.{version[1]}"
        ).first()
        if existing is not None:
            return existing
        cap = build_cap(
            package_aid(spec["rid"]),
            [applet_aid(spec["rid"])],
            version,
            name=f"{spec['slug']}.wallet",
            code_size=2048 * version[0],
        )
        return create_release(
            bank=bank,
            cap_bytes=cap,
            filename=f"{spec['slug']}-wallet-{version[0]}.{version[1]}.cap",
            changelog=changelog or "First release",
            actor=actor,
        )
