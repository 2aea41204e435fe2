"""Test kit for over-the-air sessions: an in-process server adapter for the agent and a world
whose bank can load the real test CAP files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rest_framework.test import APIClient

from agent.core import RelayError, SessionResult, run_session
from cards import services as card_services
from cards.models import Card
from cardsim.transport import InProcessCard
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from tests.factories import make_user
from updates import services as update_services
from updates.models import Release
from updates.releases import create_release


class ApiServer:
    """The relay API through Django's test client, counting HTTP exchanges."""

    def __init__(self, token: str, client: APIClient | None = None) -> None:
        self.client = client or APIClient()
        self.headers = {"HTTP_AUTHORIZATION": f"Agent {token}"}
        self.requests = 0
        self.tamper_response: Any = None  # hook: (number, responses) -> responses

    def open_session(self, mode: str) -> dict[str, Any]:
        self.requests += 1
        response = self.client.post("/api/v1/relay/sessions/", {"mode": mode}, format="json", **self.headers)
        if response.status_code != 201:
            raise RelayError(f"{response.status_code}: {response.content[:200]!r}")
        return response.json()

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        self.requests += 1
        if self.tamper_response is not None:
            responses = self.tamper_response(number, responses)
        response = self.client.post(
            f"/api/v1/relay/sessions/{session}/exchanges/",
            {"exchange": number, "responses": responses},
            format="json",
            **self.headers,
        )
        if response.status_code == 409:
            raise RelayError(response.json()["detail"])
        if response.status_code != 200:
            raise RelayError(f"{response.status_code}: {response.content[:300]!r}")
        return response.json()


@dataclass
class OtaWorld:
    agency: Organization
    bank: Organization
    other_bank: Organization
    citizen: Any
    card: Card
    token: str
    releases: dict[str, Release] = field(default_factory=dict)
    operator: Any = None

    def card_transport(self) -> InProcessCard:
        transport = InProcessCard(self.card.state_file)
        transport.reset()
        return transport

    def present(self, *, mode: str = "batch", server: ApiServer | None = None, transport: Any = None) -> SessionResult:
        server = server or ApiServer(self.token)
        transport = transport or self.card_transport()
        return run_session(transport, server, mode=mode)


def build_ota_world(cap_path: Path | None = None, *, scp: int = 0x03, bank_rid: str = "0102030405") -> OtaWorld:
    """Agency, a bank whose AID range holds the given CAP's package (the GPPro Empty CAP by default),
    another bank, a citizen with an emulated card and a device credential."""
    agency = issuer_services.create_organization(name="National Card Agency", slug="agency", kind="agency")
    bank = issuer_services.admit_bank(name="Alpha Bank", slug="alpha", rid=bank_rid, scp=scp)
    other = issuer_services.admit_bank(name="Beta Bank", slug="beta", rid="A000000888", pix_prefix="02", scp=scp)
    operator = make_user("alpha_op")
    issuer_services.add_member(organization=bank, user=operator, role=Membership.Role.OPERATOR)
    citizen = make_user("citizen1")
    card = card_services.issue_card(agency=agency, holder=citizen, scp=scp, emulated=True)
    _credential, token = update_services.issue_agent_credential(user=citizen, name="test reader")
    world = OtaWorld(
        agency=agency, bank=bank, other_bank=other, citizen=citizen, card=card, token=token, operator=operator
    )
    if cap_path is not None:
        release = create_release(bank=bank, cap_bytes=cap_path.read_bytes(), filename=cap_path.name, actor=operator)
        world.releases[release.package_aid] = release
    return world


def enroll(world: OtaWorld, bank: Organization | None = None) -> Any:
    bank = bank or world.bank
    return card_services.request_enrollment(
        card=world.card,
        bank=bank,
        citizen=world.citizen,
        consent_text=card_services.consent_text_for(world.card, bank),
        accepted=True,
    )
