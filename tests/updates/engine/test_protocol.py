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
    KeyChoice,
    Registry,
    SessionRejected,
    StepFailed,
    _card_reply,
    expected_first,
    initialize_update_apdu,
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
