"""Personalisation per instance: INSTALL [for personalization] + STORE DATA (GP 2.3.1 §11.5.2.3.6,
§11.11), kept on the card and read back with ``80 CA 00 FE 00``; tearing keeps the old data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cardsim import store
from cardsim.constants import SSD_MODULE_AID, SSD_PACKAGE_AID
from cardsim.listing import render
from cardsim.state import new_state, personalization
from cardsim.transport import InProcessCard
from gp import commands as c
from tests.cardsim.conftest import EMPTY
from tests.cardsim.hostlib import HostSession, check_consistency, sw_of

BANK = bytes.fromhex("A0000005590101")
OTHER_BANK = bytes.fromhex("A0000005590201")
APP = bytes.fromhex("0102030405060708AA")
READ_BACK = bytes.fromhex("80CA00FE00")
BLOCKS = [bytes.fromhex("0101") + bytes(range(40)), bytes.fromhex("0102") + b"balance=1000", b"\xde\xad"]


def _ssd(isd: HostSession, aid: bytes) -> None:
    privs = c.Privileges.SECURITY_DOMAIN | c.Privileges.AUTHORIZED_MANAGEMENT
    params = c.install_parameters(c.sd_install_parameters(0x03, 0x70))
    isd.ok(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, aid, privs, params))


def _bank_card_with_instance(card, load_file) -> None:
    isd = HostSession(card.transmit).open()
    _ssd(isd, BANK)
    _ssd(isd, OTHER_BANK)
    bank = HostSession(card.transmit, BANK).open()
    empty = load_file(EMPTY)
    assert all(sw == 0x9000 for _, sw in bank.load(empty))
    bank.ok(c.install_for_install(empty.package_aid, empty.applet_aids[0], APP))


def _personalise(s: HostSession, blocks: list[bytes], aid: bytes = APP) -> list[int]:
    sws = [s.send(c.install_for_personalization(aid))[1]]
    sws += [s.send(cmd)[1] for cmd in c.store_data_commands(blocks)]
    return sws


def _read_back(card, aid: bytes = APP) -> bytes:
    assert sw_of(card.transmit(c.select(aid))) == 0x9000
    return card.transmit(READ_BACK)


def test_perso_under_c_dec_is_kept_and_read_back(make_card, load_file) -> None:
    card = make_card()
    _bank_card_with_instance(card, load_file)
    assert _read_back(card) == b"\x6a\x88"  # nothing personalised yet
    bank = HostSession(card.transmit, BANK, security_level=0x33).open()  # C-MAC, C-DEC, R-MAC, R-ENC
    assert _personalise(bank, BLOCKS) == [0x9000] * 4
    expected = b"".join(BLOCKS)
    assert card.personalization(APP) == expected == personalization(card.state, APP.hex().upper())
    assert _read_back(card) == expected + b"\x90\x00"
    again = InProcessCard(card.path)  # the data is in the card's non-volatile memory
    assert again.personalization(APP) == expected
    listing = render(again.state)
    assert f"Perso:   {len(expected)} bytes" in listing and expected.hex().upper() not in listing
    check_consistency(card.state)


def test_a_second_sequence_replaces_the_whole_personalisation(make_card, load_file) -> None:
    card = make_card()
    _bank_card_with_instance(card, load_file)
    bank = HostSession(card.transmit, BANK).open()
    assert _personalise(bank, BLOCKS) == [0x9000] * 4
    assert _personalise(bank, [b"v2"]) == [0x9000] * 2
    assert card.personalization(APP) == b"v2"


def test_perso_is_refused_for_instances_not_associated_with_the_sd(make_card, load_file) -> None:
    card = make_card()
    _bank_card_with_instance(card, load_file)
    other = HostSession(card.transmit, OTHER_BANK).open()
    assert other.send(c.install_for_personalization(APP))[1] == 0x6A88  # another bank's instance
    isd = HostSession(card.transmit).open()
    assert isd.send(c.install_for_personalization(APP))[1] == 0x6A88  # the ISD does not reach into it
    assert isd.send(c.install_for_personalization(bytes.fromhex("A0000009999999")))[1] == 0x6A88
    bank = HostSession(card.transmit, BANK).open()
    assert bank.send(c.install_for_personalization(BANK))[1] == 0x6A88  # an SD is not its own application
    # a locked instance cannot be personalised
    bank.ok(c.set_status(c.SET_STATUS_APP, 0x80, APP))
    assert bank.send(c.install_for_personalization(APP))[1] == 0x6985
    assert card.personalization(APP) is None


def test_store_data_without_install_for_personalization_does_not_reach_the_application(make_card, load_file) -> None:
    card = make_card()
    _bank_card_with_instance(card, load_file)
    bank = HostSession(card.transmit, BANK).open()
    # addressed to the SD itself (§11.11.1): data that is not the SD's BER-TLV is refused ...
    assert bank.send(c.store_data(b"\xde\xad", 0, last=True))[1] == 0x6A80
    # ... and BER-TLV data stays with the SD; block numbers must start at 00
    assert bank.send(c.store_data(bytes.fromhex("C10101"), 1, last=True))[1] == 0x6A86
    assert card.personalization(APP) is None
    # after the last block the application is no longer the target
    assert _personalise(bank, [b"one"]) == [0x9000] * 2
    assert bank.send(c.store_data(b"\xde\xad", 0, last=True))[1] == 0x6A80
    assert card.personalization(APP) == b"one"


@pytest.mark.parametrize("how", ["pulled", "reselected", "new-session"])
def test_a_sequence_cut_before_its_last_block_leaves_the_previous_data(make_card, load_file, how) -> None:
    card = make_card()
    _bank_card_with_instance(card, load_file)
    bank = HostSession(card.transmit, BANK).open()
    assert _personalise(bank, [b"old"]) == [0x9000] * 2
    bank.ok(c.install_for_personalization(APP))
    cmds = c.store_data_commands([b"new-1", b"new-2", b"new-3"])
    for cmd in cmds[:2]:
        bank.ok(cmd)
    if how == "pulled":
        card = InProcessCard(card.path)
    elif how == "reselected":
        card.transmit(c.select(BANK))
    else:
        HostSession(card.transmit, BANK).open()
    assert card.personalization(APP) == b"old"
    bank = HostSession(card.transmit, BANK).open()
    assert bank.send(cmds[2])[1] == 0x6A86  # the sequence is gone: block 02 is out of sequence
    assert card.personalization(APP) == b"old"


def test_deleting_the_instance_drops_its_personalisation(make_card, load_file) -> None:
    card = make_card()
    _bank_card_with_instance(card, load_file)
    bank = HostSession(card.transmit, BANK).open()
    assert _personalise(bank, [b"x" * 100]) == [0x9000] * 2
    bank.ok(c.delete(APP, related=False))
    assert card.personalization(APP) is None
    check_consistency(card.state)


def _install_and_personalise(s: HostSession, lf) -> list[bytes]:
    cmds = [c.install_for_load(lf.package_aid, b"", lf.load_file_data_block_hash("sha256"))]
    cmds += c.load_commands(lf.load_file_data_block(), s.block_size)
    cmds.append(c.install_for_install(lf.package_aid, lf.applet_aids[0], APP))
    cmds.append(c.install_for_personalization(APP))
    cmds += c.store_data_commands(BLOCKS)
    return cmds


def test_cut_at_every_command_of_install_with_personalisation(tmp_path: Path, load_file) -> None:
    base = tmp_path / "base.json"
    store.save(base, new_state(cin=bytes(8)))
    lf = load_file(EMPTY)
    total = None
    k = 0
    while total is None or k <= total:
        path = tmp_path / f"cut{k}.json"
        shutil.copy(base, path)
        card = InProcessCard(path)
        s = HostSession(card.transmit).open()
        cmds = _install_and_personalise(s, lf)
        total = len(cmds)
        for cmd in cmds[:k]:
            assert s.send(cmd)[1] == 0x9000
        del card, s  # pulled
        card = InProcessCard(path)
        check_consistency(card.state)
        installed = APP.hex().upper() in card.state["apps"]
        perso = card.personalization(APP)
        # either no instance, or an instance without data, or the whole data: never part of it
        assert installed == (k >= total - 4), k
        assert perso == (b"".join(BLOCKS) if k == total else None), k
        k += 1
