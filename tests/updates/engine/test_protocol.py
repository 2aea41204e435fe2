"""The engine's vocabulary without a database: what the registry proves, whose fault a refusal
is, the key choice order, and the INITIALIZE UPDATE that travels with the identification."""

from __future__ import annotations

import pytest

from gp.apdu import SW
from gp.commands import RegistryEntry
from gp.errors import EncodingError, LocalProtocolError, MACError
from gp.keys import StaticKeys
from gp.scp import SCP02, SCP03
from updates.engine.protocol import (
    HOST_CHALLENGE_LEN,
    INTEGRITY_SWS,
    STATUS_APPS,
    STATUS_ELF_MODULES,
    Command,
    InFlight,
    KeyChoice,
    Registry,
    SessionRejected,
    StepFailed,
    _card_reply,
    check_answers,
    expected_first,
    initialize_update_apdu,
    parse_answers,
    refused,
    sw_of,
)

SSD = "A0000001515350414201"
PKG = "0102030405"


def entry(aid: str, lifecycle: int = 0x07) -> RegistryEntry:
    return RegistryEntry(bytes.fromhex(aid), lifecycle)


def test_listed_is_present_and_never_absent() -> None:
    registry = Registry(apps=[entry(SSD, 0x0F)], elfs=[entry(PKG, 0x01)], proven_listings=frozenset({STATUS_APPS}))
    assert registry.app(SSD) is not None and registry.elf(PKG) is not None
    assert not registry.app_absent(SSD) and not registry.elf_absent(PKG)


def test_absence_needs_a_complete_authenticated_listing_or_a_proof() -> None:
    unproven = Registry()  # a listing answered 6A88: no R-MAC, so it proves nothing
    assert unproven.app(SSD) is None and not unproven.app_absent(SSD) and not unproven.elf_absent(PKG)
    listed = Registry(proven_listings=frozenset({STATUS_APPS}))
    assert listed.app_absent(SSD) and not listed.elf_absent(PKG)  # the apps listing says nothing of ELFs
    elfs = Registry(proven_listings=frozenset({STATUS_ELF_MODULES}))
    assert elfs.elf_absent(PKG) and not elfs.app_absent(SSD)
    deleted = Registry(proofs=frozenset({f"deleted:{SSD}"}))
    assert deleted.app_absent(SSD) and not deleted.app_absent("A000000151535041")


@pytest.mark.parametrize("sw", sorted(INTEGRITY_SWS))
def test_a_security_status_rejects_the_session(sw: int) -> None:
    with pytest.raises(SessionRejected, match="integrity"):
        refused("PUT KEY", sw)


@pytest.mark.parametrize("sw", [SW.NOT_ENOUGH_MEMORY, SW.CONDITIONS_NOT_SATISFIED, SW.REFERENCED_DATA_NOT_FOUND])
def test_any_other_refusal_is_a_step_tried_again(sw: int) -> None:
    with pytest.raises(StepFailed, match=f"{sw:04X}"):
        refused("LOAD", sw)


def test_card_reply_blames_the_card_for_its_bytes_and_the_engine_for_its_misuse() -> None:
    with pytest.raises(SessionRejected, match="the registry: "), _card_reply("the registry"):
        raise EncodingError("truncated TLV")
    with pytest.raises(SessionRejected), _card_reply("a response"):
        raise MACError("bad R-MAC")
    with pytest.raises(LocalProtocolError), _card_reply("a response"):
        raise LocalProtocolError("wrap before authenticate")


def test_sw_of() -> None:
    assert sw_of(bytes.fromhex("01029000")) == SW.SUCCESS
    assert sw_of(bytes.fromhex("6A88")) == SW.REFERENCED_DATA_NOT_FOUND


def test_key_choices_round_trip_through_the_stored_state() -> None:
    for choice in (KeyChoice("isd", 0x30), KeyChoice("keyset", 0x31, 7)):
        assert KeyChoice.from_json(choice.to_json()) == choice


def test_the_key_set_on_record_is_tried_first() -> None:
    bank, initial = KeyChoice("keyset", 0x31, 1), KeyChoice("keyset", 0x30, 2)
    assert expected_first([bank, initial], 0x31) == [bank, initial]
    assert expected_first([bank, initial], 0x30) == [initial, bank]
    # not recorded yet: the key set the job replaces (the second) first
    assert expected_first([bank, initial], None) == [initial, bank]
    assert expected_first([bank], None) == [bank]
    assert expected_first([], None) == []


@pytest.mark.parametrize("kvn", [0x20, 0x30, 0x31, 0xFF])
def test_initialize_update_without_keys_is_the_channels_own(kvn: int) -> None:
    challenge = bytes(range(HOST_CHALLENGE_LEN))
    keys = StaticKeys(bytes(range(16)), bytes(range(1, 17)), bytes(range(2, 18)), version=kvn)
    assert initialize_update_apdu(kvn, challenge) == SCP03(keys, 0x33, challenge).initialize_update()
    assert initialize_update_apdu(kvn, challenge) == SCP02(keys, 0x13, challenge, i=0x55).initialize_update()


# ---------------------------------------------------------------- the relay's answers to a batch

OK, MORE, ABSENT = (SW.SUCCESS,), (SW.SUCCESS, SW.WARNING_MORE_DATA, SW.REFERENCED_DATA_NOT_FOUND), (0x9000, 0x6A88)
BATCH = [OK, MORE, ABSENT, OK]  # e.g. EXTERNAL AUTHENTICATE, GET STATUS, DELETE if present, GET STATUS


def answers(*sws: int) -> list[bytes]:
    return [sw.to_bytes(2, "big") for sw in sws]


@pytest.mark.parametrize(
    "sws",
    [
        (0x9000, 0x9000, 0x9000, 0x9000),  # the whole batch
        (0x9000, 0x6A88, 0x6A88, 0x9000),  # accepted error status words go on
        (0x6300,),  # stopped at the first command
        (0x9000, 0x9000, 0x6A84),  # stopped midway (a script computed from the expected registry)
        (0x9000, 0x9000, 0x9000, 0x6982),  # the last one refused
    ],
)
def test_answers_that_follow_the_agents_rule(sws: tuple[int, ...]) -> None:
    check_answers(BATCH, answers(*sws))


@pytest.mark.parametrize(
    ("sws", "why"),
    [
        ((0x9000,) * 5, "more responses than commands"),
        ((0x9000, 0x6A84, 0x9000), "went on after an unexpected status word"),
        ((0x6A84, 0x6A84), "went on after an unexpected status word"),
        ((0x9000, 0x9000), "truncated batch"),
        ((0x9000, 0x9000, 0x6A88), "truncated batch"),  # 6A88 was expected there: no reason to stop
    ],
)
def test_answers_that_break_it_reject_the_session(sws: tuple[int, ...], why: str) -> None:
    with pytest.raises(SessionRejected, match=why):
        check_answers(BATCH, answers(*sws))


@pytest.mark.parametrize(
    ("responses", "why"),
    [
        ([], "non-empty list"),
        ("9000", "non-empty list"),
        ({"0": "9000"}, "non-empty list"),
        (["9000"] * 4, "non-empty list"),  # over the limit
        (["90"], "at least a status word"),
        (["zz00"], "hexadecimal"),
        ([9000], "hexadecimal"),
        ([None], "hexadecimal"),
    ],
)
def test_malformed_answers_are_the_relays_fault(responses: object, why: str) -> None:
    with pytest.raises(SessionRejected, match=why):
        parse_answers(responses, limit=3)


def test_well_formed_answers_parse() -> None:
    assert parse_answers(["6A88", "01029000"], limit=3) == [b"\x6a\x88", b"\x01\x02\x90\x00"]


def test_commands_in_flight_round_trip_and_a_malformed_one_is_the_engines_bug() -> None:
    command = Command(b"\x80\xe4\x00\x80\x00", "delete", (SW.SUCCESS, SW.REFERENCED_DATA_NOT_FOUND), proves="deleted:X")
    kept = InFlight.of(command)
    assert InFlight.from_json(kept.to_json()) == kept and kept.expect == (0x9000, 0x6A88)
    for broken in ({}, {"label": "x"}, {"label": "x", "expect": ["zz"]}, None):
        with pytest.raises(LocalProtocolError, match="in flight"):
            InFlight.from_json(broken)
