"""The bank's policy (docs/keyservice.md): what the service refuses to wrap, with a reason that
names the command and the AID, journaled as ``refused``, and the caller's state still good."""

from __future__ import annotations

import hashlib

import pytest

from cardsim.transport import InProcessCard
from gp import commands as c
from gp.apdu import SW
from issuers.bank_service_client import BankServiceClient, BankServiceRefused, Unwrapped
from keyservice.policy import CallChecker, Policy, PolicyRefusal
from tests.bankservice import RunningService
from tests.keyservice.cards import BANK_PREFIX, SSD_AID, Relay, certificate_store, cin_of

PACKAGE = BANK_PREFIX + b"\x10"
APPLET = BANK_PREFIX + b"\x10\x01"
LFDB = bytes(range(256)) * 3  # a stand-in Load File Data Block, three LOAD blocks
LFDB_HASH = hashlib.sha256(LFDB).digest()
OUTSIDE = bytes.fromhex("A0000000031010")


def refused_entries(client: BankServiceClient) -> list[dict[str, object]]:
    return [e for e in client.journal()["entries"] if e["action"] == "refused"]


@pytest.fixture
def relay(client: BankServiceClient, card: InProcessCard) -> Relay:
    relay = Relay(client, card)
    relay.open_scp11b()
    return relay


Commands = list[dict[str, object]]


def load_sequence(lfdb: bytes = LFDB, lfdb_hash: bytes = LFDB_HASH) -> Commands:
    install: Commands = [{"apdu": c.install_for_load(PACKAGE, b"", lfdb_hash)}]
    return install + [{"apdu": block} for block in c.load_commands(lfdb, 200)]


REFUSALS: dict[str, tuple[Commands, str]] = {
    "delete outside the range": ([{"apdu": c.delete(OUTSIDE)}], "A0000000031010 is outside alpha's range"),
    "delete of the SD itself": ([{"apdu": c.delete(SSD_AID)}], "DELETE of the security domain itself"),
    "raw put key": ([{"apdu": c.put_key(0x31, bytes(20), old_kvn=0)}], "PUT KEY as a plain APDU"),
    "unknown INS": ([{"apdu": bytes.fromhex("80CC000000")}], "INS CC"),
    "select inside the channel": ([{"apdu": c.select(OUTSIDE)}], "SELECT"),
    "unapproved release": (load_sequence(), f"INSTALL [for load] of {PACKAGE.hex().upper()}"),
    "install from an unapproved package": (
        [{"apdu": c.install_for_install(PACKAGE, APPLET, APPLET, privileges=b"\x00")}],
        "not an approved package",
    ),
    "set status of another bank's application": ([{"apdu": c.set_status(0x40, 0x07, OUTSIDE)}], "SET STATUS"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_commands_name_the_reason_are_journaled_and_the_state_stays_good(
    relay: Relay, client: BankServiceClient, name: str
) -> None:
    commands, reason = REFUSALS[name]
    state, pending = relay.state, relay.pending
    with pytest.raises(BankServiceRefused) as refused:
        relay.exchange([{"apdu": c.get_status(0x40)}, *commands])
    assert reason in refused.value.message and refused.value.code == "policy" and refused.value.whose == "platform"
    (entry,) = refused_entries(client)
    assert entry["outcome"] == "refused" and reason in str(entry["reason"])
    # Nothing moved: the same state and the same card answers go on with an allowed command.
    relay.state, relay.pending = state, pending
    relay.exchange([{"apdu": c.get_status(0x40)}])
    (answer,) = relay.exchange([]).responses
    assert isinstance(answer, Unwrapped) and answer.sw == SW.SUCCESS and answer.authenticated


def test_an_sd_outside_the_range_is_not_opened(client: BankServiceClient, tmp_path: object) -> None:
    from tests.keyservice.cards import install_scp11_ssd, new_card

    card = new_card(tmp_path / "other.json")  # type: ignore[operator]
    install_scp11_ssd(card, OUTSIDE)
    with pytest.raises(BankServiceRefused, match="A0000000031010 is outside alpha's range"):
        client.open_scp11b(
            session="s",
            card=cin_of(card),
            sd_aid=OUTSIDE,
            kid=0x13,
            kvn=1,
            certificates=certificate_store(card, OUTSIDE),
        )
    assert refused_entries(client)[0]["sd_aid"] == OUTSIDE.hex().upper()


def test_an_approved_release_loads_only_with_blocks_that_hash_to_it(
    relay: Relay, client: BankServiceClient, alpha: RunningService
) -> None:
    alpha.approve_release(PACKAGE, LFDB_HASH, by="alice")
    tampered = bytearray(LFDB)
    tampered[300] ^= 1
    with pytest.raises(BankServiceRefused, match="do not hash to the approved release"):
        relay.exchange(load_sequence(bytes(tampered), LFDB_HASH))
    with pytest.raises(BankServiceRefused, match="last block is not in this call"):
        relay.exchange(load_sequence()[:-1])
    with pytest.raises(BankServiceRefused, match="LOAD without INSTALL"):
        relay.exchange(load_sequence()[1:])
    answer = relay.exchange(load_sequence())  # the approved blocks are wrapped
    assert len(answer.commands) == len(load_sequence()) and answer.state is not None


def test_a_dm_token_attached_to_install_or_delete_is_parsed_past() -> None:
    policy = Policy("alpha", [BANK_PREFIX])
    checker = CallChecker(policy, SSD_AID)
    token = bytes(64)
    assert checker.check(c.delete(APPLET, token=token)).aids == (APPLET,)
    with pytest.raises(PolicyRefusal, match="outside alpha's range"):
        checker.check(c.delete(OUTSIDE, token=token))
    install = c.install_for_install(PACKAGE, APPLET, APPLET, privileges=b"\x00", token=token)
    with pytest.raises(PolicyRefusal, match="not an approved package"):
        checker.check(install)
    policy.approve(PACKAGE, LFDB_HASH, "alice")
    assert checker.check(install).aids == (PACKAGE, APPLET, APPLET)


def test_manage_elf_upgrade_only_of_an_approved_package_of_the_bank() -> None:
    policy = Policy(bank="alpha", aid_prefixes=[BANK_PREFIX])
    checker = CallChecker(policy, SSD_AID)
    with pytest.raises(PolicyRefusal, match="not an approved package"):
        checker.check(c.upgrade_start(PACKAGE))
    with pytest.raises(PolicyRefusal, match="outside alpha's range"):
        checker.check(c.upgrade_start(OUTSIDE))
    policy.approve(PACKAGE, LFDB_HASH, "officer")
    assert checker.check(c.upgrade_start(PACKAGE)).aids == (PACKAGE,)
    for plain in (c.upgrade_resume(), c.upgrade_recovery(), c.upgrade_abort(), c.upgrade_status()):
        checker.check(plain)
    with pytest.raises(PolicyRefusal, match="only START carries data"):
        checker.check(bytes.fromhex("80EA020002AABB"))
    with pytest.raises(PolicyRefusal, match="P1 07"):
        checker.check(bytes.fromhex("80EA070000"))
