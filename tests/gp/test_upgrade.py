"""MANAGE ELF UPGRADE builders and parsers (gp.commands.upgrade; docs/elf-upgrade.md)."""

from __future__ import annotations

import pytest

from gp import commands as c
from gp.apdu import CommandAPDU
from gp.commands import UpgradeAction, UpgradeOutcome, UpgradeSessionStatus
from gp.errors import EncodingError, InvalidCommandError

ELF = bytes.fromhex("A000000559010101")
APPS = (bytes.fromhex("A00000055901010101"), bytes.fromhex("A00000055901010102"))


def test_action_codes_and_instruction() -> None:
    assert c.INS_MANAGE_ELF_UPGRADE == 0xEA
    assert [int(a) for a in UpgradeAction] == [0x01, 0x02, 0x03, 0x04, 0x08]


@pytest.mark.parametrize(
    ("build", "p1"),
    [(c.upgrade_resume, 0x02), (c.upgrade_recovery, 0x03), (c.upgrade_abort, 0x04), (c.upgrade_status, 0x08)],
)
def test_actions_without_data(build, p1) -> None:
    assert build() == bytes((0x80, 0xEA, p1, 0x00, 0x00))


def test_start_names_the_elf() -> None:
    apdu = CommandAPDU.from_bytes(c.upgrade_start(ELF))
    assert (apdu.cla, apdu.ins, apdu.p1, apdu.p2) == (0x80, 0xEA, 0x01, 0x00)
    assert apdu.data == b"\x4f\x08" + ELF
    with pytest.raises(InvalidCommandError):
        c.upgrade_start(b"\x01\x02")


def test_the_answer_round_trips() -> None:
    raw = c.upgrade_response(UpgradeSessionStatus.WAITING_FOR_LOAD, ELF, APPS)
    parsed = c.parse_upgrade_response(raw)
    assert parsed.status is UpgradeSessionStatus.WAITING_FOR_LOAD and parsed.in_session
    assert parsed.elf_aid == ELF and parsed.instances == APPS and parsed.outcome is None
    done = c.parse_upgrade_response(
        c.upgrade_response(UpgradeSessionStatus.NO_SESSION, outcome=UpgradeOutcome.UPGRADED)
    )
    assert not done.in_session and done.outcome is UpgradeOutcome.UPGRADED and done.elf_aid == b""
    # a busy card seen from another SD: the status alone
    assert c.parse_upgrade_response(bytes.fromhex("800102")).status is UpgradeSessionStatus.WAITING_FOR_RESUME


@pytest.mark.parametrize(
    "raw",
    [
        "",  # no status
        "800109",  # unknown status
        "80020100",  # status of two bytes
        "800100800100",  # repeated
        "800101C10100",  # unexpected object
        "8001014F02A000",  # an ELF AID of two bytes
        "8001004F08A000000559010101",  # an ELF without a session
        "8001014F08A000000559010101A1038401AA",  # instance list with something else than 4F
        "800100810107",  # unknown outcome
        "8001",  # truncated
    ],
)
def test_malformed_answers_are_refused(raw: str) -> None:
    with pytest.raises(EncodingError):
        c.parse_upgrade_response(bytes.fromhex(raw))


def test_support_is_read_from_the_card_capabilities() -> None:
    assert c.supports_elf_upgrade(c.card_capabilities(elf_upgrade=True))
    assert not c.supports_elf_upgrade(c.card_capabilities(elf_upgrade=False))
    inner = c.card_capabilities(elf_upgrade=True)[2:]
    assert c.supports_elf_upgrade(inner)  # the template's value alone
    assert not c.supports_elf_upgrade(b"")  # GET DATA 0067 answered 6A88: no capability information
    assert not c.supports_elf_upgrade(bytes.fromhex("6704DF480100"))  # version 00: not supported
    with pytest.raises(EncodingError):
        c.supports_elf_upgrade(bytes.fromhex("6705DF48"))
