"""Bad input: random and malformed APDUs never crash the card or corrupt its state."""

from __future__ import annotations

import contextlib
import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardsim.card import Card
from cardsim.state import check_state, new_state
from gp import commands as c
from gp.aids import ISD_AID, SSD_MODULE_AID, SSD_PACKAGE_AID
from gp.cap import LoadFile
from gp.errors import GPError
from tests.cardsim.conftest import EMPTY
from tests.cardsim.hostlib import HostSession, check_consistency
from tests.shared_data import cap_file

# ISO/IEC 7816-4 §5.6: 9000, 61xx, 62xx/63xx warnings, 64xx-6Fxx errors
VALID_SW1 = {0x90, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F}
INS = [0xA4, 0xCA, 0xCB, 0xF2, 0xE6, 0xE8, 0xE4, 0xF0, 0xE2, 0xD8, 0x50, 0x82, 0x70, 0xC0, 0x00, 0xFF]
BASE = new_state(cin=bytes(8))


def _populated() -> dict:
    """A card with an SSD, a load file and an instance, to give the fuzzer something to break."""
    card = Card(copy.deepcopy(BASE))
    s = HostSession(card.transmit).open()
    lf = LoadFile.from_path(cap_file(EMPTY))
    s.load(lf)
    s.ok(c.install_for_install(lf.package_aid, lf.applet_aids[0], lf.applet_aids[0]))
    s.ok(
        c.install_for_install(
            bytes.fromhex("A0000001515350"),
            bytes.fromhex("A000000151535041"),
            bytes.fromhex("A0000005590101"),
            c.Privileges.SECURITY_DOMAIN | c.Privileges.AUTHORIZED_MANAGEMENT,
        )
    )
    return card.state


def _check_response(card: Card, rapdu: bytes) -> None:
    assert len(rapdu) >= 2
    assert rapdu[-2] in VALID_SW1, rapdu.hex()
    assert card.last_error is None, card.last_error  # no internal exception was masked as 6F00
    check_state(card.state)
    check_consistency(card.state)
    assert json.loads(json.dumps(card.state)) == card.state  # still serialisable


apdu = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda cla, ins, p1, p2, data, le: (
            bytes((cla, ins, p1, p2)) + (bytes((len(data),)) + data if data else b"") + le
        ),
        st.sampled_from([0x00, 0x80, 0x84, 0x04, 0x01, 0x40, 0xE0, 0xFF, 0x20]),
        st.sampled_from(INS),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=255),
        st.sampled_from([b"", b"\x00"]),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(apdu, min_size=1, max_size=8))
def test_random_apdus_unauthenticated(apdus: list[bytes]) -> None:
    card = Card(_populated_state())
    for raw in apdus:
        _check_response(card, card.transmit(raw))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(apdu, min_size=1, max_size=8), st.sampled_from([0x00, 0x33]))
def test_random_apdus_inside_a_session(apdus: list[bytes], level: int) -> None:
    """In a session at security level 00 plain commands reach every handler; at 33 they are wrapped."""
    card = Card(_populated_state())
    s = HostSession(card.transmit, security_level=level).open()
    for raw in apdus:
        if level and len(raw) >= 4 and raw[0] & 0x80:
            with contextlib.suppress(GPError):  # the host refuses to wrap some garbage: send it raw
                raw = s.channel.wrap(raw)
        _check_response(card, card.transmit(raw))
        if level and card.channel is None:
            s = HostSession(card.transmit, security_level=level).open()


_CACHE: dict[str, dict] = {}


def _populated_state() -> dict:
    if "s" not in _CACHE:
        _CACHE["s"] = _populated()
    return copy.deepcopy(_CACHE["s"])


AIDS = [
    ISD_AID.hex(),
    SSD_PACKAGE_AID.hex(),
    SSD_MODULE_AID.hex(),
    "A0000005590101",
    "0102030405",
    "0102030405060708",
    "A0000000620101",
    "A00000FFFFA0",
    "A0000009990001",
]
aid = st.sampled_from(AIDS).map(bytes.fromhex)
privs = st.sampled_from([b"\x00", b"\x80\x00\x00", b"\xa0\x00\x00", b"\x80\x40\x00", b"\xff\xff\xff", b"\x9e"])
params = st.one_of(
    st.just(b"\xc9\x00"),
    st.just(b""),
    st.binary(max_size=20),
    st.just(c.install_parameters(c.sd_install_parameters(0x02, 0x15))),
    st.just(c.install_parameters(c.sd_install_parameters(0x07, 0x70))),
)
structured = st.one_of(
    st.builds(c.install_for_load, aid, st.one_of(st.just(b""), aid), st.binary(max_size=64), st.binary(max_size=8)),
    st.builds(
        lambda e, m, a, p, q, s: c.install_for_install(e, m, a, p, q, make_selectable=s),
        aid,
        aid,
        aid,
        privs,
        params,
        st.booleans(),
    ),
    st.builds(c.install_for_make_selectable, aid),
    st.builds(c.install_for_extradition, aid, aid),
    st.builds(
        c.install_for_registry_update, aid, st.one_of(st.just(b""), aid), st.sampled_from([b"", b"\x80\x00\x00"])
    ),
    st.builds(c.install_for_personalization, aid),
    st.builds(lambda a, r: c.delete(a, related=r), aid, st.booleans()),
    st.builds(lambda k: c.delete_key(kvn=k), st.integers(0, 0x7F)),
    st.builds(
        lambda p1, s, a: c.set_status(p1, s, a if p1 != 0x80 else b""),
        st.sampled_from([0x80, 0x40, 0x60]),
        st.sampled_from([0x00, 0x07, 0x0F, 0x7F, 0x80, 0xFF, 0x83]),
        aid,
    ),
    st.builds(lambda p1, t: c.get_status(p1, tag_format=t), st.sampled_from([0x80, 0x40, 0x20, 0x10]), st.booleans()),
    st.builds(
        lambda b, n, last: c.store_data(b, n, last=last, flags=c.STORE_DATA_BER),
        st.binary(max_size=40),
        st.integers(0, 2),
        st.booleans(),
    ),
    st.builds(
        lambda o, n, d: c.put_key(n, d, old_kvn=o),
        st.sampled_from([0, 0x30, 0x31]),
        st.integers(1, 0x7F),
        st.binary(min_size=1, max_size=80),
    ),
    st.builds(
        lambda n, b: c.load_commands(b, 200)[0][:4] + bytes([n]) + c.load_commands(b, 200)[0][5:],
        st.integers(0, 3),
        st.binary(min_size=1, max_size=300),
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(structured, min_size=1, max_size=10))
def test_well_formed_management_commands_with_random_fields(cmds: list[bytes]) -> None:
    """Plausible GP commands with random fields, in an SL 00 session so every handler runs."""
    card = Card(_populated_state())
    HostSession(card.transmit, security_level=0x00).open()
    for raw in cmds:
        _check_response(card, card.transmit(raw))
        if card.channel is None:
            if card.state["lifecycle"] != c.CARD_SECURED:
                break  # locked or terminated by a SET STATUS: nothing more to manage
            HostSession(card.transmit, security_level=0x00).open()
