"""A terminal credential in the agent's ``--loop``: three citizens' cards served in one run (in-process
emulated cards through the relay API), and a revocation that stops the terminal at once."""

from __future__ import annotations

import io
from typing import Any

import pytest

from agent import cli
from agent.http import ServerRefused
from audit.models import AuditEntry
from cards import services as card_services
from cards.models import Card, CardJob, Enrollment
from issuers import services as issuer_services
from issuers.models import Membership
from tests.factories import make_user
from tests.otakit import ApiServer, OtaWorld, build_ota_world, enroll
from updates import services
from updates.models import CardSession

pytestmark = pytest.mark.django_db


class TerminalServer(ApiServer):
    """The relay API as the real HTTP client reports it: a 401/403 is a refusal of the credential."""

    def open_session(self, mode: str) -> dict[str, Any]:
        self.requests += 1
        response = self.client.post("/api/v1/relay/sessions/", {"mode": mode}, format="json", **self.headers)
        if response.status_code in (401, 403):
            raise ServerRefused(response.status_code, response.json().get("detail", ""))
        assert response.status_code == 201, response.content
        return response.json()


def three_citizens(world: OtaWorld) -> list[Card]:
    """citizen1 (the world's), citizen2 and citizen3, each with an emulated card and Alpha requested."""
    cards = [world.card]
    for n in (2, 3):
        citizen = make_user(f"citizen{n}")
        cards.append(card_services.issue_card(agency=world.agency, holder=citizen, emulated=True))
    for card in cards:
        card_services.request_enrollment(
            card=card,
            bank=world.bank,
            citizen=card.holder,
            consent_text=card_services.consent_text_for(card, world.bank),
            accepted=True,
        )
    return cards


def alpha_terminal(world: OtaWorld) -> tuple[Any, Any, str]:
    admin = make_user("alpha_admin")
    issuer_services.add_member(organization=world.bank, user=admin, role=Membership.Role.ADMIN)
    credential, token = services.issue_terminal_credential(organization=world.bank, actor=admin, name="ATM 12")
    return admin, credential, token


def run_agent(argv: list[str], *, server: ApiServer, feed: Any = None) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, card_feed=feed, server_factory=lambda url, token: server, stream=out)
    return code, out.getvalue()


def test_a_terminal_serves_three_citizens_cards_in_one_run() -> None:
    world = build_ota_world()
    cards = three_citizens(world)
    _admin, credential, token = alpha_terminal(world)
    argv = ["--server", "http://testserver", "--token", token, "--loop"]
    for card in cards:
        argv += ["--card-file", card.state_file]

    code, text = run_agent(argv, server=TerminalServer(token))

    assert code == cli.EXIT_OK, text
    lines = [line for line in text.splitlines() if line.startswith("card ")]
    assert [line.split(":", 1)[0] for line in lines] == [f"card {n} {card.cin}" for n, card in enumerate(cards, 1)]
    assert all(": ok: card up to date: 1 job(s) done" in line for line in lines), lines
    assert text.splitlines()[-1] == "agent: 3 card(s) served: 3 up to date, 0 with errors"
    assert Enrollment.objects.filter(status=Enrollment.Status.ACTIVE).count() == 3
    sessions = CardSession.objects.filter(credential=credential)
    assert {s.card_id for s in sessions} == {c.pk for c in cards}
    done = AuditEntry.objects.filter(action="job.done")
    assert done.count() == 3
    assert {(e.actor_name, e.actor_org_slug) for e in done} == {(f"terminal:{credential.key_id}", "alpha")}


def test_a_terminal_revoked_mid_run_is_refused_at_once() -> None:
    world = build_ota_world()
    cards = three_citizens(world)
    admin, credential, token = alpha_terminal(world)
    feed = cli.FileFeed([card.state_file for card in cards])
    removals = feed.wait_for_removal

    def revoke_after_first_card(timeout: float) -> bool:
        if feed.index == 0:  # the first card leaves the reader: the bank revokes the terminal
            services.revoke_terminal_credential(credential=credential, actor=admin)
        return removals(timeout)

    feed.wait_for_removal = revoke_after_first_card  # type: ignore[method-assign]
    code, text = run_agent(
        ["--server", "http://testserver", "--reader", "ATM", "--token", token, "--loop"],
        server=TerminalServer(token),
        feed=feed,
    )

    assert code == cli.EXIT_REFUSED, text
    lines = [line for line in text.splitlines() if line.startswith("card ")]
    assert lines[0].startswith(f"card 1 {cards[0].cin}: ok") and "HTTP 401" in lines[1] and len(lines) == 2
    assert CardJob.objects.filter(card__in=cards[1:], state=CardJob.State.PENDING).count() == 2
    assert not CardSession.objects.filter(credential=credential, card__in=cards[1:]).exists()


def test_a_terminal_leaves_unconsented_work_and_says_so_per_card() -> None:
    world = build_ota_world()
    enroll(world)
    assert world.present().ok
    sd = world.card.security_domains.get(organization=world.bank)
    agency_op = make_user("agency_op")
    issuer_services.add_member(organization=world.agency, user=agency_op, role=Membership.Role.OPERATOR)
    lock = card_services.request_sd_lock(security_domain=sd, lock=True, actor=agency_op)
    _admin, _credential, token = alpha_terminal(world)

    code, text = run_agent(
        ["--server", "http://testserver", "--token", token, "--loop", "--card-file", world.card.state_file],
        server=TerminalServer(token),
    )

    lock.refresh_from_db()
    assert lock.state == CardJob.State.PENDING and lock.attempts == 0
    lines = [line for line in text.splitlines() if line.startswith("card ")]
    assert lines == [
        f"card 1 {world.card.cin}: ok: card up to date: 0 job(s) done, 2 round trips, 3 APDUs; "
        "1 job(s) wait for the holder's own device"
    ]
    assert code == cli.EXIT_OK
    assert CardSession.objects.filter(card=world.card, credential__organization=world.bank).count() == 1
