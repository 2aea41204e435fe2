"""ELF upgrade on the emulated card (GP Amendment H, MANAGE ELF UPGRADE; docs/elf-upgrade.md):
instances keep their data, a refused or torn upgrade rolls back or completes, never half-way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cardsim import store
from cardsim.constants import SSD_MODULE_AID, SSD_PACKAGE_AID
from cardsim.listing import render
from cardsim.state import new_state
from cardsim.transport import InProcessCard
from gp import commands as c
from gp.cap import LOAD_ORDER, LoadFile
from gp.commands import UpgradeOutcome, UpgradeSessionStatus
from tests.cardsim.conftest import EMPTY, LIB_BER, LIB_DEBUG, SVC
from tests.cardsim.hostlib import HostSession, check_consistency, sw_of
from tests.shared_data import cap_file

BANK = bytes.fromhex("A0000005590101")
OTHER_BANK = bytes.fromhex("A0000005590201")
APPS = (bytes.fromhex("0102030405060708A1"), bytes.fromhex("0102030405060708A2"))
DATA = {APPS[0]: b"wallet balance=1000;key=" + bytes(range(32)), APPS[1]: b"second instance"}
READ_BACK = bytes.fromhex("80CA00FE00")
VERSION = bytes.fromhex("80CA000000")  # the demo behaviour: DF01 02 <major> <minor>


class Killed(BaseException):
    """The process dies while writing the state file."""


def variant(lf: LoadFile, version: tuple[int, int], *, module_last_byte: int | None = None) -> LoadFile:
    """The same package at another version (Header, JCVM §6.3), optionally with its applet class
    renamed (Applet component, §6.5): a new version that lacks the class the instances need."""
    components = dict(lf.components)
    header = bytearray(components[1])
    header[10], header[11] = version[1], version[0]  # package minor, major
    components[1] = bytes(header)
    if module_last_byte is not None:
        applet = bytearray(components[3])
        applet[4 + applet[4]] = module_last_byte  # last byte of the first applet's AID
        components[3] = bytes(applet)
    return LoadFile.from_bytes(b"".join(components[t] for t in LOAD_ORDER if t in components))


def _upgrade(s: HostSession, cmd: bytes) -> c.UpgradeResponse:
    return c.parse_upgrade_response(s.ok(cmd))


def _bank_card(card) -> LoadFile:
    """The bank's SSD (AM), the Empty package in it, two instances, each personalised."""
    isd = HostSession(card.transmit).open()
    privs = c.Privileges.SECURITY_DOMAIN | c.Privileges.AUTHORIZED_MANAGEMENT
    params = c.install_parameters(c.sd_install_parameters(0x03, 0x70))
    for sd in (BANK, OTHER_BANK):
        isd.ok(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, sd, privs, params))
    lf = LoadFile.from_path(cap_file(EMPTY))
    bank = HostSession(card.transmit, BANK).open()
    assert all(sw == 0x9000 for _, sw in bank.load(lf))
    for app in APPS:
        bank.ok(c.install_for_install(lf.package_aid, lf.applet_aids[0], app, b"\x00", b"\xc9\x02\x01\x02"))
        bank.ok(c.install_for_personalization(app))
        for cmd in c.store_data_commands(DATA[app], max_block=16):
            bank.ok(cmd)
    bank.ok(c.set_status(c.SET_STATUS_APP, 0x80, APPS[1]))  # one instance locked: it stays locked
    return lf


def _snapshot(card) -> dict[str, dict]:
    return {a.hex().upper(): dict(card.state["apps"][a.hex().upper()]) for a in APPS}


def _assert_instances(card, lf: LoadFile, version: tuple[int, int], before: dict[str, dict]) -> None:
    """Each instance is back exactly as it was (same record, data included), on the given version."""
    elf = card.state["elfs"][lf.package_aid.hex().upper()]
    assert tuple(elf["version"]) == version
    assert _snapshot(card) == before
    for app in APPS:
        assert card.personalization(app) == DATA[app]
    assert sw_of(card.transmit(c.select(APPS[0]))) == 0x9000
    assert card.transmit(READ_BACK) == DATA[APPS[0]] + b"\x90\x00"
    assert card.transmit(VERSION) == bytes((0xDF, 0x01, 0x02, *version)) + b"\x90\x00"
    assert sw_of(card.transmit(c.select(APPS[1]))) != 0x9000  # still locked
    assert card.state.get("upgrade") is None
    check_consistency(card.state)


@pytest.fixture
def upgraded_card(make_card):
    card = make_card()
    return card, _bank_card(card)


def test_an_upgrade_keeps_every_instance_and_its_data(upgraded_card) -> None:
    card, lf = upgraded_card
    before = _snapshot(card)
    bank = HostSession(card.transmit, BANK).open()
    assert not _upgrade(bank, c.upgrade_status()).in_session
    started = _upgrade(bank, c.upgrade_start(lf.package_aid))
    assert started.status is UpgradeSessionStatus.WAITING_FOR_LOAD
    assert started.elf_aid == lf.package_aid and set(started.instances) == set(APPS)
    assert lf.package_aid.hex().upper() not in card.state["elfs"]  # the old ELF is out of the registry
    assert not set(before) & set(card.state["apps"])
    assert card.personalization(APPS[0]) == DATA[APPS[0]]  # kept in the session
    assert "ELF UPGRADE in progress" in render(card.state)
    new = variant(lf, (0, 1))
    assert all(sw == 0x9000 for _, sw in bank.load(new))
    assert _upgrade(bank, c.upgrade_status()).status is UpgradeSessionStatus.WAITING_FOR_RESUME
    done = _upgrade(bank, c.upgrade_resume())
    assert done.status is UpgradeSessionStatus.NO_SESSION and done.outcome is UpgradeOutcome.UPGRADED
    _assert_instances(card, lf, (0, 1), before)


def test_a_new_version_without_the_instances_applet_class_is_refused_and_rolled_back(upgraded_card) -> None:
    card, lf = upgraded_card
    before = _snapshot(card)
    bank = HostSession(card.transmit, BANK).open()
    _upgrade(bank, c.upgrade_start(lf.package_aid))
    assert all(sw == 0x9000 for _, sw in bank.load(variant(lf, (0, 1), module_last_byte=0x99)))
    assert bank.send(c.upgrade_resume())[1] == 0x6985  # cannot preserve data
    assert _upgrade(bank, c.upgrade_status()).status is UpgradeSessionStatus.WAITING_FOR_RESUME
    assert _upgrade(bank, c.upgrade_recovery()).outcome is UpgradeOutcome.ROLLED_BACK
    _assert_instances(card, lf, (0, 0), before)


@pytest.mark.parametrize("when", ["before-load", "mid-load", "after-load"])
def test_abort_restores_the_old_elf_and_its_instances(upgraded_card, when) -> None:
    card, lf = upgraded_card
    before = _snapshot(card)
    bank = HostSession(card.transmit, BANK).open()
    _upgrade(bank, c.upgrade_start(lf.package_aid))
    new = variant(lf, (0, 1))
    if when == "mid-load":
        bank.ok(c.install_for_load(new.package_aid, b"", new.load_file_data_block_hash("sha256")))
        bank.ok(c.load_commands(new.load_file_data_block(), 64)[0])
    elif when == "after-load":
        assert all(sw == 0x9000 for _, sw in bank.load(new))
    aborted = _upgrade(bank, c.upgrade_abort())
    assert aborted.outcome is UpgradeOutcome.ROLLED_BACK and not aborted.in_session
    _assert_instances(card, lf, (0, 0), before)
    bank = HostSession(card.transmit, BANK).open()
    assert bank.send(c.upgrade_abort())[1] == 0x6985  # no session any more


def test_the_session_survives_power_loss_and_the_registry_is_frozen_meanwhile(upgraded_card, load_file) -> None:
    card, lf = upgraded_card
    bank = HostSession(card.transmit, BANK).open()
    _upgrade(bank, c.upgrade_start(lf.package_aid))
    card = InProcessCard(card.path)  # pulled and inserted again
    bank = HostSession(card.transmit, BANK).open()
    status = _upgrade(bank, c.upgrade_status())
    assert status.status is UpgradeSessionStatus.WAITING_FOR_LOAD and set(status.instances) == set(APPS)
    assert bank.send(c.upgrade_start(lf.package_aid))[1] == 0x6985  # one session at a time
    assert bank.send(c.install_for_install(lf.package_aid, lf.applet_aids[0], APPS[0]))[1] == 0x6985
    assert bank.send(c.install_for_load(bytes.fromhex("A0000005590909"), b"", bytes(32)))[1] == 0x6985
    assert bank.send(c.install_for_load(lf.package_aid, OTHER_BANK, bytes(32)))[1] == 0x6985
    assert bank.send(c.delete(APPS[0]))[1] == 0x6985
    assert bank.send(c.upgrade_resume())[1] == 0x6985  # the new version is not loaded yet
    # another bank sees that the card is busy, not what with
    other = HostSession(card.transmit, OTHER_BANK).open()
    seen = _upgrade(other, c.upgrade_status())
    assert seen.status is UpgradeSessionStatus.WAITING_FOR_LOAD and seen.elf_aid == b"" and seen.instances == ()
    assert other.send(c.upgrade_abort())[1] == 0x6985
    bank = HostSession(card.transmit, BANK).open()
    assert _upgrade(bank, c.upgrade_abort()).outcome is UpgradeOutcome.ROLLED_BACK


def test_start_refusals(make_card, load_file) -> None:
    card = make_card()
    lf = _bank_card(card)
    isd = HostSession(card.transmit).open()
    for name in (LIB_BER, LIB_DEBUG, SVC):
        assert all(sw == 0x9000 for _, sw in isd.load(load_file(name)))
    assert isd.send(c.upgrade_start(load_file(LIB_BER).package_aid))[1] == 0x6985  # a library SVC imports
    assert isd.send(c.upgrade_start(SSD_PACKAGE_AID))[1] == 0x6985  # in ROM
    assert isd.send(c.upgrade_start(bytes.fromhex("A0000009999999")))[1] == 0x6A88
    other = HostSession(card.transmit, OTHER_BANK).open()
    assert other.send(c.upgrade_start(lf.package_aid))[1] == 0x6A88  # another bank's package
    bad = bytes.fromhex("80EA010003C00100")
    assert other.send(bad)[1] == 0x6A80
    assert other.send(bytes.fromhex("80EA050000"))[1] == 0x6A86  # no such action
    assert sw_of(card.transmit(c.upgrade_status())) == 0x6982  # outside a secure channel session
    assert card.state.get("upgrade") is None


def test_the_isd_may_run_a_banks_upgrade(upgraded_card) -> None:
    card, lf = upgraded_card
    before = _snapshot(card)
    isd = HostSession(card.transmit).open()
    _upgrade(isd, c.upgrade_start(lf.package_aid))
    new = variant(lf, (0, 2))
    assert isd.load(new)[0][1] == 0x6985  # the new version goes to the bank's SSD, as the old one
    assert all(sw == 0x9000 for _, sw in isd.load(new, sd_aid=BANK))
    assert _upgrade(isd, c.upgrade_resume()).outcome is UpgradeOutcome.UPGRADED
    _assert_instances(card, lf, (0, 2), before)


def test_a_card_without_amendment_h(make_card) -> None:
    card = make_card(elf_upgrade=False)
    s = HostSession(card.transmit).open()
    assert s.send(c.upgrade_status())[1] == 0x6D00
    assert not c.supports_elf_upgrade(s.ok(c.get_data(c.TAG_CARD_CAPABILITIES)))
    card = make_card()
    s = HostSession(card.transmit).open()
    assert c.supports_elf_upgrade(s.ok(c.get_data(c.TAG_CARD_CAPABILITIES)))
    # a state file written before the card knew upgrades has neither field: no support, no session
    state = store.load(card.path)
    del state["elf_upgrade"], state["upgrade"]
    store.save(card.path, state)
    old = InProcessCard(card.path)
    s = HostSession(old.transmit).open()
    assert s.send(c.upgrade_status())[1] == 0x6D00


# ------------------------------------------------------------------ tearing


def _sequence(s: HostSession, lf: LoadFile, new: LoadFile) -> list[bytes]:
    cmds = [c.upgrade_start(lf.package_aid)]
    cmds.append(c.install_for_load(new.package_aid, b"", new.load_file_data_block_hash("sha256")))
    cmds += c.load_commands(new.load_file_data_block(), 48)
    cmds.append(c.upgrade_resume())
    return cmds


def _recover(path: Path, lf: LoadFile, before: dict[str, dict], total: int, done: int) -> None:
    """After the card comes back: STATUS says whether a session is open; RECOVERY ends it. The card
    is then fully old (the new version was not completely loaded) or fully new, with the data."""
    card = InProcessCard(path)
    check_consistency(card.state)
    bank = HostSession(card.transmit, BANK).open()
    status = _upgrade(bank, c.upgrade_status())
    assert status.in_session == (0 < done < total), done
    if status.in_session:
        recovered = _upgrade(bank, c.upgrade_recovery())
        loaded = done >= total - 1  # the last LOAD block went through
        assert recovered.outcome is (UpgradeOutcome.UPGRADED if loaded else UpgradeOutcome.ROLLED_BACK), done
    upgraded = done >= total - 1
    _assert_instances(card, lf, (0, 1) if upgraded else (0, 0), before)


def test_cut_at_every_command_of_an_upgrade(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    store.save(base, new_state(cin=bytes(8)))
    lf = _bank_card(InProcessCard(base))
    before = _snapshot(InProcessCard(base))
    new = variant(lf, (0, 1))
    total = None
    k = 0
    while total is None or k <= total:
        path = tmp_path / f"cut{k}.json"
        shutil.copy(base, path)
        card = InProcessCard(path)
        s = HostSession(card.transmit, BANK).open()
        cmds = _sequence(s, lf, new)
        total = len(cmds)
        assert total > 5
        for cmd in cmds[:k]:
            assert s.send(cmd)[1] == 0x9000, k
        del card, s  # pulled: nothing more than each command wrote
        _recover(path, lf, before, total, k)
        k += 1


def test_killed_while_writing_at_each_step_that_changes_the_card(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "base.json"
    store.save(base, new_state(cin=bytes(8)))
    lf = _bank_card(InProcessCard(base))
    before = _snapshot(InProcessCard(base))
    new = variant(lf, (0, 1))
    probe = HostSession(InProcessCard(base).transmit, BANK).open()
    total = len(_sequence(probe, lf, new))
    for k in (0, 1, total - 2, total - 1):  # START, INSTALL [for load], the last LOAD block, RESUME
        path = tmp_path / f"kill{k}.json"
        shutil.copy(base, path)
        card = InProcessCard(path)
        s = HostSession(card.transmit, BANK).open()
        cmds = _sequence(s, lf, new)
        for cmd in cmds[:k]:
            assert s.send(cmd)[1] == 0x9000
        real_replace = store.os.replace

        def killed(src: str, dst: str) -> None:
            raise Killed

        monkeypatch.setattr(store.os, "replace", killed)
        with pytest.raises(Killed):
            s.send(cmds[k])
        monkeypatch.setattr(store.os, "replace", real_replace)
        _recover(path, lf, before, total, k)  # command k never reached the file


def test_a_torn_upgrade_can_also_be_finished_by_loading_again(tmp_path: Path) -> None:
    """Cut in the middle of the LOAD: after power-up the host loads the new version again and resumes."""
    base = tmp_path / "base.json"
    store.save(base, new_state(cin=bytes(8)))
    card = InProcessCard(base)
    lf = _bank_card(card)
    before = _snapshot(card)
    new = variant(lf, (0, 1))
    s = HostSession(card.transmit, BANK).open()
    cmds = _sequence(s, lf, new)
    for cmd in cmds[:4]:
        s.ok(cmd)
    card = InProcessCard(base)
    s = HostSession(card.transmit, BANK).open()
    assert _upgrade(s, c.upgrade_status()).status is UpgradeSessionStatus.WAITING_FOR_LOAD
    assert all(sw == 0x9000 for _, sw in s.load(new))
    assert _upgrade(s, c.upgrade_resume()).outcome is UpgradeOutcome.UPGRADED
    _assert_instances(card, lf, (0, 1), before)


def test_the_new_version_needs_the_banks_dap_like_any_load(make_card) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from gp import dap

    card = make_card()
    lf = _bank_card(card)
    before = _snapshot(card)
    isd = HostSession(card.transmit).open()
    isd.ok(
        c.install_for_registry_update(
            BANK,
            privileges=c.Privileges.SECURITY_DOMAIN
            | c.Privileges.AUTHORIZED_MANAGEMENT
            | c.Privileges.DAP_VERIFICATION,
        )
    )
    key = ec.generate_private_key(ec.SECP256R1())
    bank = HostSession(card.transmit, BANK).open()
    bank.ok(c.put_key(dap.DAP_KVN, dap.put_key_data(dap.public_point(key.public_key()))[1:]))
    _upgrade(bank, c.upgrade_start(lf.package_aid))
    new = variant(lf, (0, 1))
    assert bank.load(new)[-1][1] == 0x6982  # unsigned: refused, the session still waits for the load
    assert _upgrade(bank, c.upgrade_status()).status is UpgradeSessionStatus.WAITING_FOR_LOAD
    signature = dap.sign(key, dap.lfdb_hash(new.load_file_data_block()))
    assert bank.load(new, daps=((BANK, signature),))[-1][1] == 0x9000
    assert _upgrade(bank, c.upgrade_resume()).outcome is UpgradeOutcome.UPGRADED
    _assert_instances(card, lf, (0, 1), before)
