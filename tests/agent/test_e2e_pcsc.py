"""End to end (issue 6, acceptance 1): the platform over HTTP (``live_server``), ``python -m agent``
as a subprocess, pyscard, pcscd, vsmartcard vpcd and ``python -m cardsim serve`` on the citizen's
emulated card.

A citizen's enrollment of Alpha Bank (the GPPro Empty CAP as default applet) installs an SSD that
opens with Alpha's keys and not with the agency's, with the applet in it; removal deletes them.
The card is checked through the reader itself (the serve process owns the state file).

Under CI (CI=true) a missing pcscd/vpcd/reader fails; locally the test is skipped only when
pyscard lists no reader at all.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cards import services as card_services
from cards.models import Enrollment, SecurityDomain
from cardsim import store
from gp import commands
from gp.aids import ISD_AID
from gp.errors import AuthenticationError
from gp.scp import SCP03, StaticKeys
from issuers import custody
from tests.cardsim.hostlib import check_consistency
from tests.keyservice_process import free_port_pair, serving
from tests.otakit import build_ota_world, enroll
from tests.pcsc_support import vpcd_reader
from tests.shared_data import PROJECT_ROOT, cap_file
from updates.ota import BANK_KVN, keyset_for

pytestmark = [pytest.mark.pcsc, pytest.mark.django_db(transaction=True)]

READER = "Virtual PCD 00 00"
VPCD = "127.0.0.1:35963"
EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
INSTANCE = "0102030405060708"
ISD = ISD_AID.hex().upper()


@pytest.fixture(scope="module")
def reader() -> Any:
    """The vpcd reader, with pcscd started when it is not running."""
    return vpcd_reader(READER, tries=40)


class ServedCard:
    """``python -m cardsim serve`` attached to vpcd; ``connect()`` gives a pyscard connection to it.

    vpcd serves one card per port: another ``cardsim serve`` on the same port (a concurrent test
    run elsewhere on the machine) is waited out rather than talked to — the card in the reader
    must answer with this card's CIN.
    """

    def __init__(self, state: Path, reader: Any, log: Path) -> None:
        self.state, self.reader, self.log = state, reader, log
        self.cin = store.load(state)["cin"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServedCard:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cardsim", "serve", str(self.state), "--vpcd", VPCD],
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.connect(timeout=120).close()  # wait until this card is in the reader
        return self

    def connect(self, timeout: float = 120.0) -> Reader:
        from smartcard.Exceptions import CardConnectionException, NoCardException

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            connection = self.reader.createConnection()
            try:
                connection.connect()
                card = Reader(connection)
                if card.transmit(commands.select(bytes.fromhex(ISD))).endswith(b"\x90\x00"):
                    cin = card.transmit(bytes.fromhex("80CA004500"))
                    if cin[-2:] == b"\x90\x00" and cin[2:-2].hex().upper() == self.cin:
                        return card
                card.close()  # someone else's card: wait for it to leave the reader
            except (NoCardException, CardConnectionException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"our card is not in {READER}; serve log:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM: serve exits cleanly and frees the vpcd slot."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=15)
            self.proc = None


class Reader:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def transmit(self, capdu: bytes) -> bytes:
        data, sw1, sw2 = self.connection.transmit(list(capdu))
        return bytes(data) + bytes((sw1, sw2))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.disconnect()


@pytest.fixture
def serve(reader: Any, tmp_path: Path) -> Iterator[Callable[[Path], ServedCard]]:
    started: list[ServedCard] = []

    def start(state: Path) -> ServedCard:
        card = ServedCard(state, reader, tmp_path / "serve.log")
        started.append(card)  # registered before it starts: a failed start is still cleaned up
        return card.start()

    yield start
    for card in started:
        if card.proc is not None:
            card.stop()


def run_agent(url: str, token: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--server", url, "--reader", READER, "--token", token, "--timeout", "120"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert token not in result.stdout + result.stderr
    (tmp_path / "agent.log").open("a").write(result.stderr)
    return result


def open_scp03(card: Reader, sd_aid: str, keys: StaticKeys) -> SCP03:
    assert card.transmit(commands.select(bytes.fromhex(sd_aid)))[-2:] == b"\x90\x00"
    channel = SCP03(keys, 0x33, sd_aid=bytes.fromhex(sd_aid))
    response = card.transmit(channel.initialize_update())
    assert response[-2:] == b"\x90\x00", response.hex()
    assert card.transmit(channel.external_authenticate(response))[-2:] == b"\x90\x00"
    return channel


def registry(card: Reader, channel: SCP03, p1: int) -> list[str]:
    listing = channel.unwrap(card.transmit(channel.wrap(commands.get_status(p1))))
    if listing[-2:] != b"\x90\x00":
        return []
    return [e.aid.hex().upper() for e in commands.parse_get_status(listing[:-2], p1)]


def test_enrollment_and_removal_through_pcsc_and_http(live_server, settings, tmp_path: Path, serve) -> None:
    settings.ECARD_CARDS_DIR = tmp_path
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    enrollment = enroll(world)
    sd_aid = enrollment.security_domain.aid
    card = serve(Path(world.card.state_file))

    # enrollment: SSD, bank keys, default applet
    result = run_agent(live_server.url, world.token, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "card up to date: 1 job(s) done" in result.stderr
    assert "done    Enroll bank" in result.stderr
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.ACTIVE
    sd = SecurityDomain.objects.get(aid=sd_aid, card=world.card)
    assert sd.state == SecurityDomain.State.ACTIVE and sd.key_kvn == BANK_KVN[3]
    assert list(sd.applets.values_list("instance_aid", flat=True)) == [INSTANCE]

    conn = card.connect()
    try:
        bank_keys = custody.load_static_keys(keyset_for(world.bank, world.card, sd_aid, BANK_KVN[3]))
        channel = open_scp03(conn, sd_aid, bank_keys)  # the SSD opens with Alpha's keys
        assert INSTANCE in registry(conn, channel, 0x40)
        assert release.package_aid in registry(conn, channel, 0x20)
        # ... and not with the agency's: neither its ISD keys nor the initial SSD key set
        isd = custody.card_isd_keys(world.agency, world.card.cin, bytes.fromhex(world.card.kdd), "kdf3")
        assert conn.transmit(commands.select(bytes.fromhex(sd_aid)))[-2:] == b"\x90\x00"
        initial = SCP03(StaticKeys(isd.enc, isd.mac, isd.dek, version=0x30), 0x33)
        assert conn.transmit(initial.initialize_update())[-2:] == bytes.fromhex("6A88")
        agency_try = SCP03(StaticKeys(isd.enc, isd.mac, isd.dek, version=BANK_KVN[3]), 0x33)
        response = conn.transmit(agency_try.initialize_update())
        assert response[-2:] == b"\x90\x00"
        with pytest.raises(AuthenticationError):
            agency_try.external_authenticate(response)
    finally:
        conn.close()

    # removal: DELETE the SSD with its content
    card_services.request_removal(enrollment=Enrollment.objects.get(pk=enrollment.pk), actor=world.citizen)
    result = run_agent(live_server.url, world.token, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done    Remove bank" in result.stderr
    sd.refresh_from_db()
    assert sd.state == SecurityDomain.State.REMOVED and not sd.applets.exists()
    conn = card.connect()
    try:
        channel = open_scp03(conn, world.card.isd_aid, isd)
        on_card = registry(conn, channel, 0x40) + registry(conn, channel, 0x20)
        assert sd_aid not in on_card and INSTANCE not in on_card and release.package_aid not in on_card
    finally:
        conn.close()

    # a second run finds nothing to do
    result = run_agent(live_server.url, world.token, tmp_path)
    assert result.returncode == 0 and "card up to date: 0 job(s) done, 2 round trips" in result.stderr

    assert card.stop() == 0  # clean exit frees the vpcd slot
    state = store.load(Path(world.card.state_file))  # written by serve; consistent after a clean stop
    check_consistency(state)
    assert sd_aid not in state["apps"] and sd_aid not in state["sds"] and release.package_aid not in state["elfs"]
    assert state["load"] is None


def test_the_demo_enrollment_and_an_update_run_through_alphas_key_service(
    live_server, settings, tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo world (seed_demo) with Alpha's key service as its own process: citizen1's pending
    enrollment and then an applet update run through pcscd, vpcd and ``cardsim serve``, every
    channel to Alpha's SSD opened and wrapped by Alpha's service. With the service stopped the
    update waits (held, not failed); when it is back, it completes."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from cards.models import Card, CardJob
    from updates.models import Release
    from updates.services import issue_agent_credential

    settings.ECARD_CARDS_DIR = tmp_path / "cards"
    settings.ECARD_KEYSERVICE_DIR = tmp_path / "keyservice"
    settings.ECARD_KEYSERVICE_CLIENT_DIR = tmp_path / "platform-identity"
    monkeypatch.setenv("ECARD_DEMO_KEYSERVICE_PORT", str(free_port_pair()))
    call_command("seed_demo", stdout=open(tmp_path / "seed.log", "w"))  # noqa: SIM115
    citizen = get_user_model().objects.get(username="citizen1")
    _credential, token = issue_agent_credential(user=citizen, name="pcsc reader")
    card = Card.objects.get(holder=citizen)
    served = serve(Path(card.state_file))

    with serving(tmp_path / "keyservice" / "alpha", tmp_path / "alpha-service.log") as alpha:
        result = run_agent(live_server.url, token, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "done    Enroll bank" in result.stderr
        enrollment = Enrollment.objects.get(card=card, bank__slug="alpha")
        assert enrollment.status == Enrollment.Status.ACTIVE
        sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
        assert sd.scp == 0x11 and sd.key_kvn == 0x31 and sd.lifecycle == SecurityDomain.Lifecycle.PERSONALIZED
        instance = sd.applets.get().instance_aid

        upgrade = Release.objects.get(bank__slug="alpha", package_version="2.0")
        job = CardJob.objects.create(
            card=card,
            kind=CardJob.Kind.UPDATE_APPLET,
            organization=sd.organization,
            security_domain=sd,
            params={"packages": [{"release": upgrade.pk, "instances": [instance]}]},
        )
        alpha.stop()
        result = run_agent(live_server.url, token, tmp_path)
        job.refresh_from_db()
        assert job.state == CardJob.State.PENDING and job.attempts == 0, (job.state, job.last_error)
        assert "key service is unavailable" in job.last_error

        alpha.start()
        result = run_agent(live_server.url, token, tmp_path)
        assert result.returncode == 0, result.stderr
        job.refresh_from_db()
        assert job.state == CardJob.State.DONE, job.last_error
        assert sd.applets.get().package_version == "2.0"
    assert served.stop() == 0


def test_agent_reports_a_missing_reader(reader: Any) -> None:
    """Exit 4 naming the reader and listing those present; no server is contacted."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--reader",
            "No Such Reader",
            "--token",
            "eca_000000000000_unused",
            "--timeout",
            "0",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("agent: error: reader 'No Such Reader' not found (readers: ") and READER in last


def test_the_agent_holds_the_card_exclusively(serve, reader: Any, tmp_path: Path) -> None:
    """Another application's APDUs must not interleave with a secure channel session: the agent
    connects exclusively, and waits for a card that another application holds."""
    from smartcard.Exceptions import CardConnectionException

    from agent.pcsc import NoCard, wait_for_card
    from cardsim.state import new_state

    state = tmp_path / "card.json"
    store.save(state, new_state())
    card = serve(state)
    other = card.connect()  # another application holds the card (shared)
    try:
        with pytest.raises(NoCard, match="in use by another application"):
            wait_for_card(READER, 1.0)
    finally:
        other.close()
    agent_card = wait_for_card(READER, 10.0)
    try:
        assert agent_card.transmit(commands.select(bytes.fromhex(ISD)))[-2:] == b"\x90\x00"
        with pytest.raises(CardConnectionException):
            reader.createConnection().connect()  # nobody else gets in while the agent holds it
    finally:
        agent_card.close()
    assert card.stop() == 0
