"""End to end through real PC/SC: pyscard → pcscd → vsmartcard vpcd → ``python -m cardsim serve``.

Reader "Virtual PCD 00 00" (vpcd port 35963; CARDSIM_TEST_VPCD_PORT below). Under CI (CI=true) a missing
pcscd/vpcd fails
the test; locally it is skipped only when pyscard lists no reader at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gp import commands as c
from gp.aids import ISD_AID
from gp.cap import LoadFile
from tests.cardsim.conftest import ALGTEST, EMPTY, LIB_BER, LIB_DEBUG, SVC
from tests.cardsim.hostlib import HostSession, check_consistency, sw_of
from tests.pcsc_support import vpcd_reader
from tests.shared_data import PROJECT_ROOT, cap_file

pytestmark = pytest.mark.pcsc

# One vpcd port per test at a time: "Virtual PCD 00 00" is port 35963, "... 00 01" is 35964.
# CARDSIM_TEST_VPCD_PORT=35964 moves these tests to the second reader (e.g. while another suite
# holds the first one on a shared machine).
_PORT = int(os.environ.get("CARDSIM_TEST_VPCD_PORT", "35963"))
READER = f"Virtual PCD 00 {_PORT - 35963:02d}"
VPCD = f"127.0.0.1:{_PORT}"
KEY_HEX = "404142434445464748494A4B4C4D4E4F"


@pytest.fixture(scope="module")
def reader() -> object:
    """The vpcd reader, with pcscd started if it is not running."""
    return vpcd_reader(READER, tries=20)


class Served:
    """A ``cardsim serve`` subprocess attached to vpcd, and a pyscard connection to its card."""

    def __init__(self, state: Path, reader: object, log: Path) -> None:
        self.state, self.reader, self.log = state, reader, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: object = None

    def _spawn(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cardsim", "serve", str(self.state), "--vpcd", VPCD, "-v"],
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> Served:
        """Start ``serve`` and connect; the card in the reader must be *this* card (its CIN).

        vpcd serves one card per port; another ``cardsim serve`` on the same port (a concurrent
        test run elsewhere on the machine) is waited out rather than talked to. After a SIGKILL
        vpcd sometimes leaves the next client queued unaccepted; a fresh ``serve`` gets through.
        """
        from smartcard.Exceptions import CardConnectionException, NoCardException
        from smartcard.scard import SCARD_SHARE_EXCLUSIVE

        cin = json.loads(self.state.read_text())["cin"]
        self._spawn()
        deadline = time.monotonic() + 120
        respawn_at = time.monotonic() + 10
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            conn = self.reader.createConnection()  # type: ignore[attr-defined]
            try:
                # exclusive: no other PC/SC client may reset or talk to the card during the test
                conn.connect(mode=SCARD_SHARE_EXCLUSIVE)
                self.conn = conn
                if self.transmit(bytes.fromhex("00A4040000"))[-2:] == b"\x90\x00":
                    r = self.transmit(bytes.fromhex("80CA004500"))
                    if r[-2:] == b"\x90\x00" and r[2:-2].hex().upper() == cin:
                        return self
                self._disconnect()  # someone else's card: wait for it to leave the reader
                respawn_at = time.monotonic() + 10
            except (NoCardException, CardConnectionException):
                self.conn = None
            if time.monotonic() > deadline:
                raise AssertionError(f"card did not appear in {READER}; log:\n{self.log.read_text()}")
            if time.monotonic() > respawn_at:  # our client was never accepted: start a fresh one
                self.proc.terminate()
                self.proc.wait(timeout=15)
                self._spawn()
                respawn_at = time.monotonic() + 10
            time.sleep(0.2)

    def transmit(self, capdu: bytes) -> bytes:
        data, sw1, sw2 = self.conn.transmit(list(capdu))  # type: ignore[attr-defined]
        return bytes(data) + bytes((sw1, sw2))

    def _disconnect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # the card may already be gone
                self.conn.disconnect()  # type: ignore[attr-defined]
            self.conn = None

    def stop(self) -> int:
        """SIGTERM: the serve process must exit cleanly (status 0)."""
        self._disconnect()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=15)
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL: the card is pulled from the reader mid-command stream."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=15)
        self.proc = None
        self._disconnect()


@pytest.fixture
def serve(reader: object, tmp_path: Path) -> Iterator[Callable[[Path], Served]]:
    started: list[Served] = []

    def make(state: Path) -> Served:
        s = Served(state, reader, tmp_path / "serve.log")
        started.append(s)  # registered before it starts, so a failed start is still cleaned up
        return s.start()

    yield make
    # Every path, a skip or failure half-way included: drop our exclusive PC/SC connection, then
    # take the card out of the reader, so the next test finds the vpcd slot free.
    for s in started:
        s._disconnect()
        if s.proc is not None:
            s.proc.kill()
            s.proc.wait(timeout=15)
            s.proc = None


def _init(path: Path, *args: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "cardsim", "init", str(path), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert path.stat().st_mode & 0o777 == 0o600


def _lf(name: str) -> LoadFile:
    return LoadFile.from_path(cap_file(name))


@pytest.mark.parametrize(("scp", "level"), [("03", 0x33), ("02", 0x03)])
def test_full_lifecycle_through_pcsc(serve, tmp_path: Path, scp: str, level: int) -> None:
    state = tmp_path / "card.json"
    _init(state, "--scp", scp)
    # The CAP files first: without ../shared the test skips before a card is in the reader.
    svc, ber, dbg, empty, alg = _lf(SVC), _lf(LIB_BER), _lf(LIB_DEBUG), _lf(EMPTY), _lf(ALGTEST)
    card = serve(state)
    s = HostSession(card.transmit, scp=int(scp), security_level=level).open()
    initial = s.registry()
    # the service before the libraries it imports: the card cannot link it (6A88 on the last block)
    results = s.load(svc)
    assert results[-1][1] == 0x6A88 and all(sw == 0x9000 for _, sw in results[:-1])
    for lf in (ber, dbg, svc, empty, alg):
        assert all(sw == 0x9000 for _, sw in s.load(lf)), lf.name
    for lf in (svc, empty, alg):
        assert s.install(lf.package_aid, lf.applet_aids[0], lf.applet_aids[0])[1] == 0x9000
    apps = {e.aid: e for e in s.status(c.STATUS_APPS)}
    for lf in (svc, empty, alg):
        assert apps[lf.applet_aids[0]].lifecycle == c.APP_SELECTABLE
        assert apps[lf.applet_aids[0]].elf_aid == lf.package_aid
    elfs = {e.aid: e for e in s.status(c.STATUS_ELF_MODULES)}
    assert elfs[svc.package_aid].modules == tuple(svc.applet_aids)
    assert elfs[ber.package_aid].modules == ()
    # select an applet through PC/SC; the demo behaviour answers with its package version
    r = card.transmit(c.select(svc.applet_aids[0]))
    assert sw_of(r) == 0x9000 and c.parse_fci(r[:-2]).aid == svc.applet_aids[0]
    assert card.transmit(bytes.fromhex("80CA000000")) == bytes.fromhex("DF010200009000")
    # delete with related objects; the libraries only after their importer
    s = HostSession(card.transmit, scp=int(scp), security_level=level).open()
    assert s.delete(ber.package_aid)[1] == 0x6985
    for lf in (svc, empty, alg, ber, dbg):
        assert s.delete(lf.package_aid, related=True)[1] == 0x9000, lf.name
    assert s.registry() == initial
    assert card.stop() == 0
    check_consistency(json.loads(state.read_text()))
    shown = subprocess.run(
        [sys.executable, "-m", "cardsim", "show", str(state)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"ISD: {ISD_AID.hex().upper()}" in shown and KEY_HEX not in shown.upper()


def test_sigkill_mid_load_then_restart(serve, tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    _init(state)
    alg = _lf(ALGTEST)
    card = serve(state)
    s = HostSession(card.transmit).open()
    h = alg.load_file_data_block_hash("sha256")
    s.ok(c.install_for_load(alg.package_aid, b"", h))
    blocks = c.load_commands(alg.load_file_data_block(), s.block_size)
    for cmd in blocks[:5]:
        s.ok(cmd)
    card.kill()  # pulled mid-LOAD
    recorded = json.loads(state.read_text())
    assert recorded["load"] is not None and recorded["load"]["next"] == 5
    card = serve(state)  # inserted again: the partial load is discarded at power-up
    s = HostSession(card.transmit).open()
    assert alg.package_aid not in {e.aid for e in s.status(c.STATUS_ELF)}
    assert json.loads(state.read_text())["load"] is None
    assert all(sw == 0x9000 for _, sw in s.load(alg))
    assert s.install(alg.package_aid, alg.applet_aids[0], alg.applet_aids[0])[1] == 0x9000
    assert alg.applet_aids[0] in {e.aid for e in s.status(c.STATUS_APPS)}
    assert card.stop() == 0
    check_consistency(json.loads(state.read_text()))


def test_scp11_ssd_through_pcsc_with_gp_and_yubikit(serve, tmp_path: Path) -> None:
    """Issue 16: an SSD installed for SCP11 is opened with SCP11b by gp and by yubikit over PC/SC;
    after PUT KEY of an SCP03 key set inside that SCP11 session it opens with SCP03 (after the
    card was pulled and put back, too)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from yubikit.core.smartcard.scp import KeyRef, Scp03KeyParams, Scp11KeyParams
    from yubikit.core.smartcard.scp import StaticKeys as YubikitKeys

    from cardsim import scp11
    from gp.aids import SSD_MODULE_AID, SSD_PACKAGE_AID
    from gp.apdu import SW
    from gp.keys import StaticKeys
    from gp.scp11 import SCP11b
    from tests.cardsim.scp11_host import SCP11Session, sd_point
    from tests.cardsim.test_scp11_yubikit import SsdSession
    from tests.yubikit_peer import RecordingConnection

    ssd = bytes.fromhex("A000000151535344424B03")
    state = tmp_path / "card.json"
    _init(state, "--scp", "11")
    anchor = scp11.issuer_anchor(json.loads(state.read_text()))
    assert anchor is not None
    card = serve(state)
    isd = HostSession(card.transmit).open()
    params = c.install_parameters(c.sd_install_parameters(0x11, 0x00))
    assert isd.install(SSD_PACKAGE_AID, SSD_MODULE_AID, ssd, privileges=b"\x80", params=params)[1] == SW.SUCCESS
    point = sd_point(card.transmit, ssd, anchor)  # GET DATA BF21, chain checked to the card issuer CA

    gp_session = SCP11Session(card.transmit, ssd, SCP11b(point, 0x01))
    assert gp_session.open() == SW.SUCCESS
    assert gp_session.send(c.get_data(0x66))[1] == SW.SUCCESS

    pk_sd = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    yk = SsdSession(RecordingConnection(card), ssd)
    yk.authenticate(Scp11KeyParams(KeyRef(0x13, 0x01), pk_sd))
    assert bytes.fromhex("2A864886FC6B041100") in yk.get_data(0x66)

    bank = StaticKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)), 0x30)
    gp_session = SCP11Session(card.transmit, ssd, SCP11b(point, 0x01))
    assert gp_session.open() == SW.SUCCESS
    assert gp_session.put_scp03_keys(bank)[1] == SW.SUCCESS

    scp03 = HostSession(card.transmit, ssd)
    scp03.keys = bank
    assert scp03.open().send(c.get_data(0x66))[1] == SW.SUCCESS
    assert card.stop() == 0
    card = serve(state)  # the card pulled and put back: the keys are in its memory
    yk03 = SsdSession(RecordingConnection(card), ssd)
    yk03.authenticate(Scp03KeyParams(KeyRef(0x01, 0x30), YubikitKeys(bank.enc, bank.mac, bank.dek)))
    assert bytes.fromhex("2A864886FC6B040370") in yk03.get_data(0x66)
    assert card.stop() == 0
