"""Test kit for over-the-air sessions: an in-process server adapter for the agent and a world
whose bank can load the real test CAP files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from rest_framework.test import APIClient

from agent.core import RelayError, SessionResult, run_session
from cards import services as card_services
from cards.models import Card, CardJob
from cardsim.transport import InProcessCard
from gp import commands
from gp.scp import SCP03
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

    def another_reader(self, name: str = "second reader") -> ApiServer:
        """The relay API as seen by another device of the same citizen (its own credential)."""
        _credential, token = update_services.issue_agent_credential(user=self.citizen, name=name)
        return ApiServer(token)


def build_ota_world(
    cap_path: Path | None = None, *, scp: int = 0x03, bank_rid: str = "0102030405", bank_scp: int | None = None
) -> OtaWorld:
    """Agency, a bank whose AID range holds the given CAP's package (the GPPro Empty CAP by default),
    another bank, a citizen with an emulated card and a device credential. ``bank_scp`` (default:
    the card's) is the SCP the banks' SSDs are installed for: 0x11 for banks with a key service."""
    agency = issuer_services.create_organization(name="National Card Agency", slug="agency", kind="agency")
    bank_scp = bank_scp or scp
    bank = issuer_services.admit_bank(name="Alpha Bank", slug="alpha", rid=bank_rid, scp=bank_scp)
    other = issuer_services.admit_bank(name="Beta Bank", slug="beta", rid="A000000888", pix_prefix="02", scp=bank_scp)
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


def update_applet_job(world: OtaWorld, sd: Any, params: dict[str, Any]) -> CardJob:
    """An applet update job of the world's bank on ``sd`` (``params``: packages to load and
    install, and/or packages to remove), queued as the rollouts queue it."""
    return CardJob.objects.create(
        card=world.card, kind=CardJob.Kind.UPDATE_APPLET, organization=world.bank, security_domain=sd, params=params
    )


def enroll(world: OtaWorld, bank: Organization | None = None) -> Any:
    bank = bank or world.bank
    return card_services.request_enrollment(
        card=world.card,
        bank=bank,
        citizen=world.citizen,
        consent_text=card_services.consent_text_for(world.card, bank),
        accepted=True,
    )


class PulledCard(Exception):
    """The card left the reader."""


class PullableCard:
    """A card transport pulled from the reader after ``limit`` APDUs.

    ``lose_response``: the APDU at ``limit`` reaches the card and runs, but its response never
    comes back (pulled after the card wrote its state); otherwise it never reaches the card.
    """

    def __init__(self, inner: Any, limit: int, *, lose_response: bool = False) -> None:
        self.inner = inner
        self.limit = limit
        self.lose_response = lose_response
        self.count = 0

    def transmit(self, capdu: bytes) -> bytes:
        if self.count == self.limit:
            if self.lose_response:
                self.inner.transmit(capdu)
            raise PulledCard(f"card pulled at APDU {self.limit}")
        self.count += 1
        return self.inner.transmit(capdu)


class CuttingServer(ApiServer):
    """Loses the connection at exchange ``cut`` (1 = open): before the server sees the request, or
    after it has answered (``after=True``: the answer is lost)."""

    def __init__(self, token: str, cut: int, *, after: bool = False) -> None:
        super().__init__(token)
        self.cut = cut
        self.after = after

    def _maybe_cut(self, call: Any) -> dict[str, Any]:
        if self.requests + 1 == self.cut:
            if self.after:
                call()
            self.requests += 1 if not self.after else 0
            raise ConnectionError(f"connection lost at exchange {self.cut}")
        return call()

    def open_session(self, mode: str) -> dict[str, Any]:
        return self._maybe_cut(lambda: ApiServer.open_session(self, mode))

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        return self._maybe_cut(lambda: ApiServer.exchange(self, session, number, responses))


def card_registry(world: OtaWorld) -> dict[str, set[str]]:
    """The card's registry as the ISD sees it (AIDs of applications/SDs and of load files)."""
    from gp.scp import SCP02
    from issuers import custody

    transport = world.card_transport()
    card = world.card
    keys = custody.card_isd_keys(card.issued_by, card.cin, bytes.fromhex(card.kdd), card.key_scheme)
    assert transport.transmit(commands.select(bytes.fromhex(card.isd_aid)))[-2:] == b"\x90\x00"
    channel = SCP03(keys, 0x33) if card.scp == 3 else SCP02(keys, 0x13, i=card.scp_i)
    response = transport.transmit(channel.initialize_update())
    assert transport.transmit(channel.external_authenticate(response))[-2:] == b"\x90\x00"
    registry: dict[str, set[str]] = {}
    for p1, name in ((0x40, "apps"), (0x20, "elfs")):
        aids: set[str] = set()
        command = commands.get_status(p1)
        while True:
            plain = channel.unwrap(transport.transmit(channel.wrap(command)))
            if plain[-2:] in (b"\x90\x00", b"\x63\x10"):
                aids |= {e.aid.hex().upper() for e in commands.parse_get_status(plain[:-2], p1)}
            if plain[-2:] != b"\x63\x10":
                break
            command = commands.get_status(p1, next_occurrence=True)
        registry[name] = aids
    return registry


def platform_view(world: OtaWorld) -> dict[str, set[str]]:
    """What the platform's records say should be on the card (SSDs and applet instances)."""
    from cards.models import AppletInstance, CardPackage, SecurityDomain

    sds = SecurityDomain.objects.filter(card=world.card, is_isd=False, state=SecurityDomain.State.ACTIVE)
    applets = AppletInstance.objects.filter(security_domain__in=sds)
    packages = CardPackage.objects.filter(security_domain__in=sds)
    return {
        "sds": set(sds.values_list("aid", flat=True)),
        "applets": set(applets.values_list("instance_aid", flat=True)),
        "packages": set(packages.values_list("package_aid", flat=True)),
    }


def assert_registry_matches_records(world: OtaWorld) -> None:
    registry = card_registry(world)
    view = platform_view(world)
    rom = {
        "A0000000620001",
        "A0000000620101",
        "A0000000620102",
        "A0000000620201",
        "A0000000620209",
        "A00000015100",
        "A0000001515350",
    }
    assert registry["apps"] == view["sds"] | view["applets"], (registry, view)
    assert registry["elfs"] - rom == view["packages"], (registry, view)


def assert_consistent_in_progress(world: OtaWorld) -> None:
    """After an interrupted session: the card holds nothing the platform does not know of — only
    records, or targets of the card's pending jobs (work under way); no partial load file."""
    from cards.models import CardJob, SecurityDomain
    from updates.models import Release

    registry = card_registry(world)
    known_apps = set(SecurityDomain.objects.filter(card=world.card, is_isd=False).values_list("aid", flat=True))
    known_apps |= platform_view(world)["applets"]
    packages = set(platform_view(world)["packages"])
    for job in CardJob.objects.filter(card=world.card, state__in=CardJob.OPEN_STATES):
        for spec in job.params.get("default_applets", []) + job.params.get("applets", []):
            known_apps.add(spec["instance_aid"].upper())
            packages.add(Release.objects.get(pk=spec["release"]).package_aid)
    rom = {
        "A0000000620001",
        "A0000000620101",
        "A0000000620102",
        "A0000000620201",
        "A0000000620209",
        "A00000015100",
        "A0000001515350",
    }
    assert registry["apps"] <= known_apps, (registry, known_apps)
    assert registry["elfs"] - rom <= packages, (registry, packages)


class ForgingRelay:
    """Answers chosen commands itself: a command whose INS is in ``forge`` (or whose position is
    ``at``) gets the forged status word, which has no R-MAC. With ``forward`` the card still
    runs the command and only its answer is replaced (the C-MAC chain stays intact)."""

    def __init__(
        self,
        inner: Any,
        forge: dict[int, bytes] | None = None,
        *,
        at: int = -1,
        answer: bytes = b"",
        forward: bool = False,
    ) -> None:
        self.inner = inner
        self.forge = forge or {}
        self.at = at
        self.answer = answer
        self.forward = forward
        self.count = 0
        self.forged = 0
        self.seen: list[int] = []

    def transmit(self, capdu: bytes) -> bytes:
        index = self.count
        self.count += 1
        self.seen.append(capdu[1])
        forged = self.answer if index == self.at else self.forge.get(capdu[1])
        if forged is None:
            return self.inner.transmit(capdu)
        self.forged += 1
        if self.forward:
            self.inner.transmit(capdu)
        return forged


@contextmanager
def rolled_back() -> Iterator[None]:
    """Run a block in a transaction that is rolled back: many worlds in one test, each forgotten."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def register_key_service(bank: Organization, service: Any) -> Any:
    """The agency admits a running bank key service (tests.bankservice) for ``bank``."""
    from issuers.key_services import register_key_service as register

    return register(
        organization=bank, endpoint=service.url, service_certificate_pem=service.certificate_pem, actor=None
    )


@contextmanager
def serving_key_service(world: OtaWorld, directory: Path) -> Iterator[Any]:
    """The world's bank runs its own key service (its AID range, the agency's card CA, the
    platform's TLS identity), registered by the agency; stopped on exit."""
    from issuers.custody.authorities import ca_public_pem
    from issuers.custody_models import KeySet
    from issuers.key_services import platform_identity
    from tests.bankservice import running_bank_service

    with running_bank_service(
        directory,
        bank=world.bank.slug,
        aid_prefixes=[bytes.fromhex(p) for p in world.bank.aid_ranges.values_list("prefix", flat=True)],
        card_ca_pem=ca_public_pem(world.agency, KeySet.Purpose.CARD_CA),
        platform_cert_pem=platform_identity().certificate_pem,
    ) as service:
        register_key_service(world.bank, service)
        yield service


def open_scp03(transport: Any, sd_aid: str, keys: Any) -> SCP03:
    """Open SCP03 (full security level) with ``sd_aid`` directly on a card, no platform between."""
    assert transport.transmit(commands.select(bytes.fromhex(sd_aid)))[-2:] == b"\x90\x00"
    channel = SCP03(keys, 0x33, sd_aid=bytes.fromhex(sd_aid))
    response = transport.transmit(channel.initialize_update())
    assert response[-2:] == b"\x90\x00", response.hex()
    assert transport.transmit(channel.external_authenticate(response))[-2:] == b"\x90\x00"
    return channel
