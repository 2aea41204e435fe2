"""Whose fault each gp error is: our misuse raises LocalProtocolError, a malformed or forged card
reply raises RemoteProtocolError carrying the status word (when there is one) and its name."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from gp import commands as c
from gp.aids import ISD_AID
from gp.apdu import SW
from gp.errors import (
    APDUError,
    AuthenticationError,
    EncodingError,
    GPError,
    InvalidCommandError,
    LocalProtocolError,
    MACError,
    MalformedResponseError,
    RemoteProtocolError,
    SecureChannelError,
    StatusWordError,
    TLVError,
)
from gp.scp import SCP02, SCP03, ChannelState, SecurityLevel, StaticKeys
from gp.scp.card import CardSCP02, CardSCP03

KEYS = StaticKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)), 0x30)
KEYS02 = StaticKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)), 0x20)
LIST_APPS = c.get_status(c.STATUS_APPS)


def open_pair(scp: int) -> tuple[Any, Any]:
    if scp == 3:
        card: Any = CardSCP03(KEYS, sd_aid=ISD_AID)
        host: Any = SCP03(KEYS, SecurityLevel(0x33), sd_aid=ISD_AID)
    else:
        card = CardSCP02(KEYS02, sd_aid=ISD_AID)
        host = SCP02(KEYS02, SecurityLevel(0x13), sd_aid=ISD_AID)
    assert (
        card.external_authenticate(host.external_authenticate(card.initialize_update(host.initialize_update())))
        == b"\x90\x00"
    )
    return host, card


def test_the_two_directions_are_disjoint_and_both_gp_errors() -> None:
    for local in (SecureChannelError, InvalidCommandError):
        assert issubclass(local, LocalProtocolError) and not issubclass(local, RemoteProtocolError)
    for remote in (AuthenticationError, MACError, StatusWordError, MalformedResponseError):
        assert issubclass(remote, RemoteProtocolError) and not issubclass(remote, LocalProtocolError)
    assert issubclass(LocalProtocolError, GPError) and issubclass(RemoteProtocolError, GPError)
    # A builder's bad argument stays an encoding error for callers that catch those.
    assert issubclass(InvalidCommandError, APDUError)


# --- local: our misuse ---------------------------------------------------------------------


MISUSES: dict[str, Callable[[], object]] = {
    "wrap before authentication": lambda: SCP03(KEYS).wrap(LIST_APPS),
    "external authenticate before initialize update": lambda: SCP03(KEYS).external_authenticate(b"\x90\x00"),
    "a security level SCP02 does not define": lambda: SCP02(KEYS02, 0x33),
    "an SCP02 option the library does not implement": lambda: SCP02(KEYS02, 0x03, i=0x0A),
    "a host challenge of the wrong length": lambda: SCP03(KEYS, 0x33, host_challenge=b"\x00" * 5),
    "a session state that is not one": lambda: SCP03.from_session_state(None, {"scp": 3}),
    "a channel state unknown to ChannelState": lambda: SCP03.from_session_state(
        {**open_pair(3)[0].session_state(), "state": "half-open"}
    ),
    "a command too long to wrap": lambda: open_pair(3)[0].wrap(bytes.fromhex("80E80000FF") + bytes(255)),
    "a malformed plain command to wrap": lambda: open_pair(3)[0].wrap(b"\x80\xf2"),
    "an AID of 3 bytes": lambda: c.select(b"\xa0\x00\x00"),
    "a GET STATUS P1 GP does not define": lambda: c.get_status(0x01),
    "a SET STATUS P1 GP does not define": lambda: c.set_status(0x10, 0x07, ISD_AID),
    "a GET DATA tag beyond P1 P2": lambda: c.get_data(0x10000),
    "a PUT KEY version beyond 7F": lambda: c.put_key(0x80, b""),
    "privileges of 2 bytes": lambda: c.install_for_install(ISD_AID, ISD_AID, ISD_AID, privileges=b"\x80\x00"),
    "an unknown life cycle kind": lambda: c.lifecycle_name("volume", 0x07),
}


@pytest.mark.parametrize("misuse", sorted(MISUSES))
def test_each_misuse_raises_a_local_error(misuse: str) -> None:
    with pytest.raises(LocalProtocolError) as raised:
        MISUSES[misuse]()
    assert not isinstance(raised.value, RemoteProtocolError)


# --- remote: the card's reply --------------------------------------------------------------


@pytest.mark.parametrize("scp", [2, 3])
def test_a_refused_initialize_update_names_its_status_word(scp: int) -> None:
    host = SCP03(KEYS, 0x33) if scp == 3 else SCP02(KEYS02, 0x03)
    host.initialize_update()
    with pytest.raises(StatusWordError) as raised:
        host.external_authenticate(b"\x6a\x88")
    assert isinstance(raised.value, RemoteProtocolError)
    assert raised.value.sw == SW.REFERENCED_DATA_NOT_FOUND
    assert raised.value.sw_name is not None and raised.value.sw_name.startswith("6A88")


@pytest.mark.parametrize("scp", [2, 3])
def test_a_forged_card_cryptogram_is_remote(scp: int) -> None:
    card: Any = CardSCP03(KEYS, sd_aid=ISD_AID) if scp == 3 else CardSCP02(KEYS02, sd_aid=ISD_AID)
    host: Any = SCP03(KEYS, 0x33) if scp == 3 else SCP02(KEYS02, 0x13)
    answer = bytearray(card.initialize_update(host.initialize_update()))
    answer[21 if scp == 3 else 20] ^= 0x01  # first byte of the card cryptogram (Amd D §7.1.2; GPC §E.5.1.6)
    with pytest.raises(AuthenticationError) as raised:
        host.external_authenticate(bytes(answer))
    assert isinstance(raised.value, RemoteProtocolError) and raised.value.sw == SW.SUCCESS
    assert host._state is ChannelState.CLOSED


@pytest.mark.parametrize("scp", [2, 3])
def test_a_malformed_initialize_update_answer_is_remote(scp: int) -> None:
    host: Any = SCP03(KEYS, 0x33) if scp == 3 else SCP02(KEYS02, 0x13)
    host.initialize_update()
    with pytest.raises(MalformedResponseError):
        host.external_authenticate(os.urandom(12) + b"\x90\x00")
    with pytest.raises(MalformedResponseError):
        host.external_authenticate(b"\x90")  # not even a status word


@pytest.mark.parametrize("scp", [2, 3])
def test_a_forged_r_mac_is_remote_and_closes_the_channel(scp: int) -> None:
    host, card = open_pair(scp)
    card.unwrap_command(host.wrap(LIST_APPS))
    answer = bytearray(card.wrap_response(bytes.fromhex("E3054F03A00000") + b"\x90\x00"))
    answer[0] ^= 0x01
    with pytest.raises(MACError) as raised:
        host.unwrap_response(bytes(answer))
    assert isinstance(raised.value, RemoteProtocolError)
    assert raised.value.sw is None  # a MAC failure is about the bytes, not a status word
    assert not host.is_authenticated


def test_an_error_status_word_carrying_data_is_remote() -> None:
    host, card = open_pair(3)
    card.unwrap_command(host.wrap(LIST_APPS))
    with pytest.raises(MACError, match="6A82"):
        host.unwrap_response(b"\x01\x02\x6a\x82")  # 6A82 carries no R-MAC, so no data either


def test_short_or_unasked_responses_are_remote() -> None:
    host, _card = open_pair(3)
    with pytest.raises(MalformedResponseError):
        host.unwrap_response(b"\x90")
    with pytest.raises(MalformedResponseError) as raised:
        host.unwrap_response(b"\x01" * 8 + b"\x90\x00")  # a response to no wrapped command
    assert raised.value.sw == SW.SUCCESS and raised.value.sw_name is not None


def test_the_remote_error_names_its_status_word() -> None:
    error = StatusWordError(SW.SECURITY_STATUS_NOT_SATISFIED)
    assert error.sw == 0x6982
    assert error.sw_name is not None and error.sw_name.startswith("6982")
    assert RemoteProtocolError("no status word").sw_name is None


def test_a_parser_error_is_direction_free_until_wrapped_by_its_receiver() -> None:
    with pytest.raises(EncodingError) as raised:
        c.parse_get_status(b"\xe3\x02\x4f")
    assert not isinstance(raised.value, LocalProtocolError | RemoteProtocolError)
    assert isinstance(raised.value, TLVError)
    remote = MalformedResponseError.wrap(raised.value, "GET STATUS answer", sw=SW.SUCCESS)
    assert isinstance(remote, RemoteProtocolError) and remote.__cause__ is raised.value
    assert "GET STATUS answer" in str(remote) and remote.sw == SW.SUCCESS
