"""Seed cards for the load benchmark and the fault test: ``manage.py seed_load --cards N --tokens PATH``.

Creates (idempotently) the agency, a load-test bank (``loadbank``, no default applets, so its
enrollment is two short stages), a bank operator, and N citizens ``load00000``… each with an
emulated card (state files in ``ECARD_CARDS_DIR``) on which the bank is enrolled — through the real
OTA engine, in-process, so every card and record is exactly what production would hold, and the
audit log has every step. Then a fresh device credential per citizen; the tokens are written to
PATH (mode 0600, one JSON object per line: username, token, state file, CIN, security domain id)
for ``bench/bench_load.py``. Earlier load credentials of these citizens are revoked.

Fast where it can be: users are bulk-inserted (unusable passwords), Celery work runs inline, and
only cards that are not set up yet are issued and enrolled, so re-running for more cards only
adds the missing ones.

``--delegated`` (``bench/bench_load.py --delegated``, issue 17): also a second load bank, "Load
Bank D" (``loadbank-d``), with its own key service (``demo.key_services.provision``: ``keyservice
init`` in ``ECARD_KEYSERVICE_DIR/loadbank-d``, listening on ``--keyservice-port``, default
``ECARD_LOAD_KEYSERVICE_PORT`` or 8571), and the same cards enrolled with it too: its SSDs are
installed for SCP11 and keyed by that service, so every stage in them is delegated. The enrollment
runs through the service, so it is started as a subprocess for the seed's duration (or the one
already listening on its port is used: prod-local starts it once its directory exists). Each
token row then also names that SSD (``delegated_sd_id``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from agent.core import run_session
from cards import services as card_services
from cards.models import Card, Enrollment, SecurityDomain
from cardsim.transport import InProcessCard
from demo import key_services
from ecard.celery import app
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from updates import services as update_services
from updates.models import AgentCredential, CardSession

USER_PREFIX = "load"
BANK_SLUG = "loadbank"
BANK_RID = "F04C4F4144"  # proprietary RID (ISO 7816-5 category F): "F0" + "LOAD"
OPERATOR = "loadbank_op"
CREDENTIAL_NAME = "load bench"
# The load bank whose SSDs are reached only through its own key service (--delegated).
DELEGATED_BANK_SLUG = "loadbank-d"
DELEGATED_BANK_RID = "F04C4F4244"  # "F0" + "LOBD"
DELEGATED_OPERATOR = "loadbank_d_op"
DELEGATED_KEYSERVICE_PORT = 8571


class InProcessRelay:
    """The relay services called directly (no HTTP): the :class:`agent.core.Server` protocol."""

    def __init__(self, credential: AgentCredential) -> None:
        self.credential = credential

    def open_session(self, mode: str) -> dict[str, Any]:
        return update_services.open_session(credential=self.credential, mode=mode).as_json()

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        answer = update_services.exchange(
            session_id=session, credential=self.credential, number=number, responses=responses
        )
        if answer.session.state == CardSession.State.REJECTED:
            raise CommandError(f"enrollment session rejected: {answer.session.closed_reason}")
        return answer.as_json()


def username(number: int) -> str:
    return f"{USER_PREFIX}{number:05d}"


class Command(BaseCommand):
    help = "Create N citizens with emulated cards enrolled with a load-test bank, and device tokens for the bench."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--cards", type=int, required=True, help="how many cards (citizens)")
        parser.add_argument(
            "--tokens",
            default=os.environ.get("ECARD_LOAD_TOKENS", ""),
            help="where to write the device tokens (default: ECARD_CARDS_DIR/load-tokens.jsonl)",
        )
        parser.add_argument(
            "--delegated",
            action="store_true",
            help="also enroll the cards with Load Bank D, whose SSDs are keyed by its own key service",
        )
        parser.add_argument(
            "--keyservice-port",
            type=int,
            default=int(os.environ.get("ECARD_LOAD_KEYSERVICE_PORT", DELEGATED_KEYSERVICE_PORT)),
            help="Load Bank D's key service port, when it is created (default ECARD_LOAD_KEYSERVICE_PORT or 8571)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = int(options["cards"])
        if not 1 <= count <= 100_000:
            raise CommandError("--cards must be 1..100000")
        tokens_path = Path(options["tokens"] or Path(settings.ECARD_CARDS_DIR) / "load-tokens.jsonl")
        # Key preparation tasks run inline here: the enrollment sessions below need the keys at once.
        app.conf.task_always_eager = True
        started = time.monotonic()
        agency, bank, operator = self._organisations()
        banks = [bank]
        users = self._users(count)
        with contextlib.ExitStack() as stack:
            if options["delegated"]:
                bank_d = self._delegated_bank(agency, int(options["keyservice_port"]))
                directory = key_services.service_directory(bank_d)
                log = Path(settings.VAR_DIR) / "log" / f"keyservice-{bank_d.slug}-seed.log"
                stack.enter_context(key_services.serving(directory, log))
                banks.append(bank_d)
            issued, enrolled = self._cards(agency, users, banks)
        rows = self._credentials(users, bank)
        tokens_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tokens_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
        del operator
        self.stdout.write(
            self.style.SUCCESS(
                f"{count} load cards ready ({issued} issued, {enrolled} enrolled now) in "
                f"{time.monotonic() - started:.1f} s; tokens: {tokens_path}"
            )
        )

    def _cards(self, agency: Organization, users: list[Any], banks: list[Organization]) -> tuple[int, int]:
        issued = enrolled = 0
        for user in users:
            # One commit per card (issue, enrollment sessions, credentials): seeding is sequential,
            # so holding the audit log's append lock across it costs nothing.
            with transaction.atomic():
                card = Card.objects.filter(holder=user).first()
                if card is None:
                    card = card_services.issue_card(agency=agency, holder=user, emulated=True)
                    issued += 1
                elif not Path(card.state_file).exists():
                    raise CommandError(
                        f"{user.username}'s card state file {card.state_file} is gone (a temp dir cleared?): "
                        "that card is lost; seed into a fresh database"
                    )
                for bank in banks:
                    if self._enroll(card, user, bank):
                        enrolled += 1
        return issued, enrolled

    # ------------------------------------------------------------------------------------------
    def _organisations(self) -> tuple[Organization, Organization, Any]:
        agency = Organization.objects.filter(kind=Organization.Kind.AGENCY, is_active=True).order_by("pk").first()
        if agency is None:
            agency = issuer_services.create_organization(
                name="National Card Agency", slug="agency", kind=Organization.Kind.AGENCY
            )
        bank = Organization.objects.filter(slug=BANK_SLUG).first()
        if bank is None:
            bank = issuer_services.admit_bank(name="Load Test Bank", slug=BANK_SLUG, rid=BANK_RID)
        user_model = get_user_model()
        operator = user_model.objects.filter(username=OPERATOR).first()
        if operator is None:
            operator = user_model.objects.create(username=OPERATOR, password=make_password(None))
            issuer_services.add_member(organization=bank, user=operator, role=Membership.Role.OPERATOR)
        return agency, bank, operator

    def _delegated_bank(self, agency: Organization, port: int) -> Organization:
        """Load Bank D, its operator, and its key service (created once; its port is fixed then)."""
        bank = Organization.objects.filter(slug=DELEGATED_BANK_SLUG).first()
        if bank is None:
            bank = issuer_services.admit_bank(name="Load Bank D", slug=DELEGATED_BANK_SLUG, rid=DELEGATED_BANK_RID)
        user_model = get_user_model()
        if not user_model.objects.filter(username=DELEGATED_OPERATOR).exists():
            operator = user_model.objects.create(username=DELEGATED_OPERATOR, password=make_password(None))
            issuer_services.add_member(organization=bank, user=operator, role=Membership.Role.OPERATOR)
        directory = key_services.service_directory(bank)
        if (directory / "config.json").exists():
            port = int(json.loads((directory / "config.json").read_text())["port"])
        key_services.provision(bank, agency, port=port, approver="loadbank-d-officer")
        return bank

    def _users(self, count: int) -> list[Any]:
        user_model = get_user_model()
        names = [username(n) for n in range(count)]
        existing = set(user_model.objects.filter(username__in=names).values_list("username", flat=True))
        unusable = make_password(None)  # citizens of the load test never log in to the portal
        user_model.objects.bulk_create(
            [user_model(username=name, password=unusable) for name in names if name not in existing], batch_size=1000
        )
        by_name = {u.username: u for u in user_model.objects.filter(username__in=names)}
        return [by_name[name] for name in names]

    def _enroll(self, card: Card, user: Any, bank: Organization) -> bool:
        """Enroll the load bank on the card through the OTA engine (in-process); False if already done."""
        enrollment = Enrollment.objects.filter(card=card, bank=bank).first()
        if enrollment is not None and enrollment.status == Enrollment.Status.ACTIVE:
            return False
        if enrollment is None:
            card_services.request_enrollment(
                card=card,
                bank=bank,
                citizen=user,
                consent_text=card_services.consent_text_for(card, bank),
                accepted=True,
            )
        credential, _token = update_services.issue_agent_credential(user=user, name="load seeding")
        for _ in range(3):
            result = run_session(InProcessCard(card.state_file), InProcessRelay(credential))
            if result.pending == 0:
                break
        update_services.revoke_agent_credential(credential=credential, actor=user)
        enrollment = Enrollment.objects.get(card=card, bank=bank)
        if enrollment.status != Enrollment.Status.ACTIVE:
            raise CommandError(f"card {card.cin}: the load bank's enrollment did not complete ({enrollment.status})")
        return True

    @transaction.atomic
    def _credentials(self, users: list[Any], bank: Organization) -> list[dict[str, Any]]:
        """A fresh device credential per citizen (the token exists only in the file written next)."""
        old = AgentCredential.objects.filter(user__in=users, name=CREDENTIAL_NAME, revoked_at__isnull=True)
        for credential in old:
            update_services.revoke_agent_credential(credential=credential, actor=credential.user)
        cards = {c.holder_id: c for c in Card.objects.filter(holder__in=users)}
        sds = {
            sd.card_id: sd
            for sd in SecurityDomain.objects.filter(
                card__in=cards.values(), organization=bank, state=SecurityDomain.State.ACTIVE
            )
        }
        delegated = {
            sd.card_id: sd.pk
            for sd in SecurityDomain.objects.filter(
                card__in=cards.values(), organization__slug=DELEGATED_BANK_SLUG, state=SecurityDomain.State.ACTIVE
            )
        }
        rows = []
        for user in users:
            card = cards[user.pk]
            sd = sds[card.pk]
            _credential, token = update_services.issue_agent_credential(user=user, name=CREDENTIAL_NAME)
            rows.append(
                {
                    "username": user.username,
                    "token": token,
                    "state_file": card.state_file,
                    "cin": card.cin,
                    "card_id": card.pk,
                    "sd_id": sd.pk,
                    **({"delegated_sd_id": delegated[card.pk]} if card.pk in delegated else {}),
                }
            )
        return rows
