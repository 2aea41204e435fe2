"""Tearing: the card cut at every command of a LOAD sequence (and mid-write) stays consistent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cardsim import store
from cardsim.state import new_state
from cardsim.transport import InProcessCard
from gp import commands as c
from gp.cap import LoadFile
from tests.cardsim.conftest import ALGTEST
from tests.cardsim.hostlib import HostSession, check_consistency
from tests.shared_data import cap_file


class Killed(BaseException):
    """The process dies (not an exception the card could handle)."""


def _sequence(s: HostSession, lf: LoadFile) -> list[bytes]:
    h = lf.load_file_data_block_hash("sha256")
    cmds = [c.install_for_load(lf.package_aid, b"", h)]
    cmds += c.load_commands(lf.load_file_data_block(), s.block_size)
    cmds.append(c.install_for_install(lf.package_aid, lf.applet_aids[0], lf.applet_aids[0]))
    return cmds


def _check_after_restart(path: Path, lf: LoadFile, total: int, done: int) -> None:
    card = InProcessCard(path)  # power-up: an incomplete LOAD is discarded
    assert card.state["load"] is None
    check_consistency(card.state)
    s = HostSession(card.transmit).open()
    elfs = {e.aid: e for e in s.status(c.STATUS_ELF_MODULES)}
    complete = done >= total - 1  # the last LOAD block went through
    assert (lf.package_aid in elfs) == complete, f"cut after {done} commands"
    if complete:
        assert elfs[lf.package_aid].modules == tuple(lf.applet_aids)
        assert s.delete(lf.package_aid)[1] == 0x9000  # the job's resume: delete, then run again
    # a second full run succeeds
    s = HostSession(card.transmit).open()
    assert [s.send(cmd)[1] for cmd in _sequence(s, lf)] == [0x9000] * total
    check_consistency(card.state)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.json"
    store.save(path, new_state(cin=bytes(8)))
    return path


def test_cut_at_every_command_of_a_load(base: Path, tmp_path: Path) -> None:
    lf = LoadFile.from_path(cap_file(ALGTEST))
    total = None
    k = 0
    while total is None or k <= total:
        path = tmp_path / f"cut{k}.json"
        shutil.copy(base, path)
        card = InProcessCard(path)
        s = HostSession(card.transmit).open()
        cmds = _sequence(s, lf)
        total = len(cmds)
        assert total > 10
        for cmd in cmds[:k]:
            assert s.send(cmd)[1] == 0x9000
        del card, s  # pulled from the reader: no shutdown, no flush beyond what each command wrote
        _check_after_restart(path, lf, total, k)
        k += 1


def test_killed_while_writing_the_state_file(base: Path, tmp_path: Path, monkeypatch) -> None:
    lf = LoadFile.from_path(cap_file(ALGTEST))
    for k in (0, 3, 14, 15):  # INSTALL [for load], a middle block, the last block, INSTALL [for install]
        path = tmp_path / f"kill{k}.json"
        shutil.copy(base, path)
        card = InProcessCard(path)
        s = HostSession(card.transmit).open()
        cmds = _sequence(s, lf)
        for cmd in cmds[:k]:
            assert s.send(cmd)[1] == 0x9000
        real_replace = store.os.replace

        def killed(src: str, dst: str) -> None:
            raise Killed

        monkeypatch.setattr(store.os, "replace", killed)
        with pytest.raises(Killed):
            s.send(cmds[k])
        monkeypatch.setattr(store.os, "replace", real_replace)
        _check_after_restart(path, lf, len(cmds), k)  # command k never reached the file


def test_state_write_failure_answers_memory_failure(make_card, monkeypatch) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    before = store.load(card.path)

    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", full)
    assert s.send(c.install_for_load(bytes.fromhex("A0000009990001")))[1] == 0x6581
    monkeypatch.undo()
    assert card.state == before == store.load(card.path)
