"""Property tests: host <-> card round trips, tamper detection, state persistence, length limits."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gp.apdu import CommandAPDU
from gp.errors import APDUError, AuthenticationError, GPError, KeyMaterialError, MACError, SecureChannelError
from gp.scp import SCP02, SCP03, StaticKeys
from gp.scp_card import ISD_AID, CardSCP02, CardSCP03, sw_for_error

PROPS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCP03_CONFIGS = [(kl, s16, sl) for kl in (16, 24, 32) for s16 in (False, True) for sl in (0x01, 0x03, 0x11, 0x13, 0x33)]
SCP02_CONFIGS = [(i, sl) for i in (0x15, 0x55) for sl in (0x01, 0x03, 0x11, 0x13)]


def _id03(c: tuple[int, bool, int]) -> str:
    return f"AES{c[0] * 8}-{'S16' if c[1] else 'S8'}-SL{c[2]:02X}"


def _id02(c: tuple[int, int]) -> str:
    return f"i{c[0]:02X}-SL{c[1]:02X}"


Pair = tuple[Any, Any]


def open_scp03(kl: int, s16: bool, sl: int, seed: bytes = b"") -> Pair:
    keys = StaticKeys(os.urandom(kl), os.urandom(kl), os.urandom(kl), 0x30)
    card = CardSCP03(keys, s16=s16, i=0x71 if s16 else 0x70, sd_aid=ISD_AID, sequence_counter=41)
    host = SCP03(keys, security_level=sl, s16=s16, sd_aid=ISD_AID)
    rapdu = card.initialize_update(host.initialize_update())
    assert card.external_authenticate(host.external_authenticate(rapdu)) == b"\x90\x00"
    assert host.is_authenticated and card.is_authenticated
    assert host.card_challenge_verified is True
    return host, card


def open_scp02(i: int, sl: int) -> Pair:
    keys = StaticKeys(os.urandom(16), os.urandom(16), os.urandom(16), 0x20)
    card = CardSCP02(keys, i=i, sd_aid=ISD_AID, sequence_counter=7)
    host = SCP02(keys, security_level=sl, i=i, sd_aid=ISD_AID)
    rapdu = card.initialize_update(host.initialize_update())
    assert card.external_authenticate(host.external_authenticate(rapdu)) == b"\x90\x00"
    return host, card


@st.composite
def commands(draw: st.DrawFn, max_data: int) -> bytes:
    cla = draw(st.sampled_from([0x80, 0x00, 0x81]))
    data = draw(st.binary(max_size=max_data))
    le = draw(st.none() | st.integers(1, 256))
    return CommandAPDU(
        cla, draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.integers(0, 255)), data, le
    ).to_bytes()


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    sw = draw(st.sampled_from([0x9000, 0x6310, 0x6283, 0x6A82, 0x6982, 0x6D00]))
    ok = sw == 0x9000 or sw >> 8 in (0x62, 0x63)
    data = draw(st.binary(max_size=200)) if ok else b""
    return data + sw.to_bytes(2, "big")


def _round_trip(host: Any, card: Any, cmds: list[bytes], resps: list[bytes]) -> None:
    for cmd, resp in zip(cmds, resps, strict=True):
        assert card.unwrap_command(host.wrap(cmd)) == cmd
        assert host.unwrap(card.wrap_response(resp)) == resp


@pytest.mark.parametrize("cfg", SCP03_CONFIGS, ids=_id03)
@PROPS
@given(data=st.data())
def test_scp03_round_trip(cfg: tuple[int, bool, int], data: st.DataObject) -> None:
    host, card = open_scp03(*cfg)
    n = data.draw(st.integers(1, 4))
    cmds = [data.draw(commands(host.max_data_length())) for _ in range(n)]
    resps = [data.draw(responses()) for _ in range(n)]
    _round_trip(host, card, cmds, resps)


@pytest.mark.parametrize("cfg", SCP02_CONFIGS, ids=_id02)
@PROPS
@given(data=st.data())
def test_scp02_round_trip(cfg: tuple[int, int], data: st.DataObject) -> None:
    host, card = open_scp02(*cfg)
    n = data.draw(st.integers(1, 4))
    cmds = [data.draw(commands(host.max_data_length())) for _ in range(n)]
    resps = [data.draw(responses()) for _ in range(n)]
    _round_trip(host, card, cmds, resps)


@pytest.mark.parametrize("cfg", [(16, False, 0x33), (32, True, 0x33), (24, False, 0x13)], ids=_id03)
def test_scp03_pipelined(cfg: tuple[int, bool, int]) -> None:
    """DESIGN §6: a batch of wrapped commands, then the batch of responses."""
    host, card = open_scp03(*cfg)
    cmds = [bytes.fromhex("80E80001") + bytes((n,)) + os.urandom(n) for n in (5, 100, host.max_data_length())]
    secured = [host.wrap(c) for c in cmds]
    replies = []
    for s, c in zip(secured, cmds, strict=True):
        assert card.unwrap_command(s) == c
        replies.append(card.wrap_response(b"\x00" + c[5:9] + b"\x90\x00"))
    for r, c in zip(replies, cmds, strict=True):
        assert host.unwrap(r) == b"\x00" + c[5:9] + b"\x90\x00"


def test_scp03_extended_length() -> None:
    host, card = open_scp03(16, False, 0x33)
    cmd = CommandAPDU(0x80, 0xE8, 0x00, 0x01, os.urandom(1000), le=256).to_bytes()
    secured = host.wrap(cmd)
    assert secured[4] == 0x00  # extended Lc
    assert card.unwrap_command(secured) == cmd


def _flip_positions(secured: bytes, le_len: int) -> list[int]:
    return list(range((len(secured) - le_len) * 8))


def _le_len(cmd: bytes) -> int:
    return 0 if CommandAPDU.from_bytes(cmd).le is None else 1


def _card_rejects(card: Any, tampered: bytes, original: bytes) -> None:
    try:
        plain = card.unwrap_command(tampered)
    except GPError as exc:
        assert isinstance(exc, MACError | SecureChannelError | APDUError)
        assert sw_for_error(exc) in (0x6982, 0x6700)
        return
    pytest.fail(f"tampered command accepted: {tampered.hex()} -> {plain.hex()} (original {original.hex()})")


@pytest.mark.parametrize("cfg", [c for c in SCP03_CONFIGS if c[0] != 24], ids=_id03)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_scp03_command_bit_flip_rejected(cfg: tuple[int, bool, int], data: st.DataObject) -> None:
    host, card = open_scp03(*cfg)
    cmd = data.draw(commands(64))
    secured = host.wrap(cmd)
    bit = data.draw(st.sampled_from(_flip_positions(secured, _le_len(cmd))))
    tampered = bytearray(secured)
    tampered[bit // 8] ^= 0x80 >> (bit % 8)
    _card_rejects(card, bytes(tampered), secured)
    assert not card.is_authenticated  # the session is over after a failure


@pytest.mark.parametrize("cfg", SCP02_CONFIGS, ids=_id02)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_scp02_command_bit_flip_rejected(cfg: tuple[int, int], data: st.DataObject) -> None:
    host, card = open_scp02(*cfg)
    cmd = data.draw(commands(64))
    secured = host.wrap(cmd)
    bit = data.draw(st.sampled_from(_flip_positions(secured, _le_len(cmd))))
    tampered = bytearray(secured)
    tampered[bit // 8] ^= 0x80 >> (bit % 8)
    _card_rejects(card, bytes(tampered), secured)


def _response_flip(host: Any, card: Any, data: st.DataObject) -> None:
    cmd = data.draw(commands(32))
    assert card.unwrap_command(host.wrap(cmd)) == cmd
    resp = data.draw(responses())
    secured = card.wrap_response(resp)
    bit = data.draw(st.integers(0, len(secured) * 8 - 1))
    tampered = bytearray(secured)
    tampered[bit // 8] ^= 0x80 >> (bit % 8)
    if len(secured) == 2:
        # error SWs carry no R-MAC (Amd D §6.2.5): a flip only yields another bare SW
        return
    with pytest.raises((MACError, SecureChannelError)):
        host.unwrap(bytes(tampered))
    assert not host.is_authenticated


@pytest.mark.parametrize("cfg", [c for c in SCP03_CONFIGS if c[2] & 0x10], ids=_id03)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_scp03_response_bit_flip_rejected(cfg: tuple[int, bool, int], data: st.DataObject) -> None:
    host, card = open_scp03(*cfg)
    _response_flip(host, card, data)


@pytest.mark.parametrize("cfg", [c for c in SCP02_CONFIGS if c[1] & 0x10], ids=_id02)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_scp02_response_bit_flip_rejected(cfg: tuple[int, int], data: st.DataObject) -> None:
    host, card = open_scp02(*cfg)
    _response_flip(host, card, data)


def test_scp03_bad_host_cryptogram_and_mac_sws() -> None:
    keys = StaticKeys.single(os.urandom(16))
    other = StaticKeys.single(os.urandom(16))
    card = CardSCP03(keys, i=0x70)
    host = SCP03(other, security_level=0x33)
    iu = card.initialize_update(host.initialize_update())
    assert iu[-2:] == b"\x90\x00"
    with pytest.raises(GPError):  # the host sees a card cryptogram it cannot verify
        host.external_authenticate(iu)
    # a host with the right keys but a tampered host cryptogram: 6300; tampered C-MAC: 6982
    for pos, sw in ((5, b"\x63\x00"), (-1, b"\x69\x82")):
        host = SCP03(keys, security_level=0x33)
        iu = card.initialize_update(host.initialize_update())
        ea = bytearray(host.external_authenticate(iu))
        ea[pos] ^= 0x01
        assert card.external_authenticate(bytes(ea)) == sw
        assert not card.is_authenticated
    assert card.external_authenticate(bytes(ea)) == b"\x69\x85"  # no INITIALIZE UPDATE before


def test_scp02_bad_host_cryptogram_and_mac_sws() -> None:
    keys = StaticKeys.single(os.urandom(16), 0x20)
    card = CardSCP02(keys, i=0x55)
    for pos, sw in ((5, b"\x63\x00"), (-1, b"\x69\x82")):
        host = SCP02(keys, security_level=0x03)
        iu = card.initialize_update(host.initialize_update())
        ea = bytearray(host.external_authenticate(iu))
        ea[pos] ^= 0x01
        assert card.external_authenticate(bytes(ea)) == sw
    host = SCP02(keys, security_level=0x03)
    assert card.initialize_update(bytes.fromhex("8050210008") + bytes(8) + b"\x00") == b"\x6a\x88"


# --- session state -----------------------------------------------------------


def _continue_equal(a: Any, b: Any, card: Any) -> None:
    for n in (0, 17, 200):
        cmd = bytes.fromhex("80E80001") + (bytes((n,)) + os.urandom(n) if n else b"")
        sa, sb = a.wrap(cmd), b.wrap(cmd)
        assert sa == sb
        assert card.unwrap_command(sb) == cmd
        resp = card.wrap_response(os.urandom(n % 40) + b"\x90\x00")
        assert a.unwrap(resp) == b.unwrap(resp)


@pytest.mark.parametrize("cfg", [(16, False, 0x33), (32, True, 0x13), (24, False, 0x11)], ids=_id03)
def test_scp03_session_state_round_trip(cfg: tuple[int, bool, int]) -> None:
    host, card = open_scp03(*cfg)
    cmd = bytes.fromhex("80F28002024F0000")
    assert card.unwrap_command(host.wrap(cmd)) == cmd
    assert host.unwrap(card.wrap_response(b"\x90\x00")) == b"\x90\x00"
    pending = host.wrap(cmd)  # pipelined: its response arrives after the hand-over
    state = json.loads(json.dumps(host.session_state()))
    assert all(isinstance(v, str | int) for v in state.values())
    restored = SCP03.from_session_state(None, state)
    assert restored.is_authenticated
    card.unwrap_command(pending)
    resp = card.wrap_response(b"\xe3\x00\x90\x00")
    assert restored.unwrap(resp) == host.unwrap(resp) == b"\xe3\x00\x90\x00"
    _continue_equal(host, restored, card)
    text = repr(restored) + repr(host)
    assert state["s_mac"] not in text


def test_scp03_session_state_before_authentication() -> None:
    keys = StaticKeys.single(os.urandom(32))
    card = CardSCP03(keys, i=0x70)
    host = SCP03(keys, security_level=0x33)
    iu_cmd = host.initialize_update()
    state = json.loads(json.dumps(host.session_state()))
    other = SCP03.from_session_state(keys, state)  # another process gets the IU response
    ea = other.external_authenticate(card.initialize_update(iu_cmd))
    assert card.external_authenticate(ea) == b"\x90\x00"
    cmd = bytes.fromhex("80CA006600")
    assert card.unwrap_command(other.wrap(cmd)) == cmd


@pytest.mark.parametrize("cfg", SCP02_CONFIGS, ids=_id02)
def test_scp02_session_state_round_trip(cfg: tuple[int, int]) -> None:
    host, card = open_scp02(*cfg)
    cmd = bytes.fromhex("80F28002024F0000")
    assert card.unwrap_command(host.wrap(cmd)) == cmd
    host.unwrap(card.wrap_response(b"\x90\x00"))
    state = json.loads(json.dumps(host.session_state()))
    restored = SCP02.from_session_state(state)  # keys are optional once authenticated
    _continue_equal(host, restored, card)
    assert restored.encrypt_key(bytes(16)) == host.encrypt_key(bytes(16))


def test_session_state_rejects_garbage() -> None:
    with pytest.raises(SecureChannelError):
        SCP03.from_session_state(None, {"scp": 3})
    with pytest.raises(SecureChannelError):
        SCP02.from_session_state(None, {"scp": 3})
    with pytest.raises(SecureChannelError):
        SCP03.from_session_state(None, None)
    with pytest.raises(KeyMaterialError):  # before authentication the static keys are needed
        SCP03.from_session_state(SCP03(StaticKeys.single(bytes(16))).session_state())


def test_wrap_before_authentication() -> None:
    host = SCP03(StaticKeys.single(bytes(16)))
    with pytest.raises(SecureChannelError):
        host.wrap(bytes.fromhex("80F22002"))


# --- lengths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "short", "extended"),
    [
        (lambda: SCP03(StaticKeys.single(bytes(16)), 0x33), 239, 65519),
        (lambda: SCP03(StaticKeys.single(bytes(16)), 0x03), 239, 65519),
        (lambda: SCP03(StaticKeys.single(bytes(16)), 0x33, s16=True), 223, 65503),
        (lambda: SCP03(StaticKeys.single(bytes(16)), 0x11), 247, 65527),
        (lambda: SCP03(StaticKeys.single(bytes(16)), 0x01, s16=True), 239, 65519),
        (lambda: SCP03(StaticKeys.single(bytes(16)), 0x00), 255, 65535),
        (lambda: SCP02(StaticKeys.single(bytes(16)), 0x03), 239, 65519),
        (lambda: SCP02(StaticKeys.single(bytes(16)), 0x01), 247, 65527),
    ],
)
def test_max_data_length(make: Any, short: int, extended: int) -> None:
    ch = make()
    assert ch.max_data_length() == short
    assert ch.max_data_length(extended=True) == extended


@pytest.mark.parametrize(
    "opener",
    [
        lambda: open_scp03(16, False, 0x33),
        lambda: open_scp03(32, True, 0x33),
        lambda: open_scp03(16, True, 0x11),
        lambda: open_scp02(0x55, 0x03),
        lambda: open_scp02(0x15, 0x01),
    ],
    ids=["scp03-s8-33", "scp03-s16-33", "scp03-s16-11", "scp02-03", "scp02-01"],
)
def test_max_data_length_fits(opener: Any) -> None:
    host, card = opener()
    m = host.max_data_length()
    load = CommandAPDU(0x80, 0xE8, 0x00, 0x01, os.urandom(m)).to_bytes()
    secured = host.wrap(load)
    assert secured[4] == len(secured) - 5 <= 255
    assert card.unwrap_command(secured) == load
    host.unwrap(card.wrap_response(b"\x00\x90\x00"))
    too_big = CommandAPDU(0x80, 0xE8, 0x00, 0x02, os.urandom(m + 1)).to_bytes()
    with pytest.raises(APDUError, match="at most"):
        host.wrap(too_big)
    # extended length carries it
    ext = CommandAPDU(0x80, 0xE8, 0x00, 0x02, os.urandom(m + 1), extended=True).to_bytes()
    assert card.unwrap_command(host.wrap(ext)) == ext


@pytest.mark.parametrize(
    "opener", [lambda: open_scp03(16, False, 0x33), lambda: open_scp02(0x55, 0x13)], ids=["SCP03-SL33", "SCP02-SL13"]
)
def test_unwrap_response_says_which_answers_the_card_authenticated(opener: Any) -> None:
    """Only 9000 and 62xx/63xx carry an R-MAC (Amd D §6.2.5, GP 2.3.1 §E.4.5). An error status
    word unwraps, but as unauthenticated: anyone on the path could have made it up."""
    host, card = opener()
    for sw, data, authenticated in (
        (0x9000, b"\x01\x02", True),
        (0x6310, b"\x03", True),
        (0x6A88, b"", False),
        (0x6982, b"", False),
    ):
        plain = data + sw.to_bytes(2, "big")
        assert card.unwrap_command(host.wrap(bytes.fromhex("80F2400002 4F00 00".replace(" ", "")))) is not None
        answer = host.unwrap_response(card.wrap_response(plain))
        assert (answer.data, answer.sw, answer.authenticated) == (data, sw, authenticated)
    # A forged error status word (the card never answered) unwraps the same way: unauthenticated.
    host.wrap(bytes.fromhex("80F24000024F0000"))
    forged = host.unwrap_response(b"\x6a\x88")
    assert forged.sw == 0x6A88 and not forged.authenticated
    # A bare 9000 cannot pass for an authenticated answer: it has no R-MAC.
    host.wrap(bytes.fromhex("80F24000024F0000"))
    with pytest.raises(MACError):
        host.unwrap_response(b"\x90\x00")


def test_unwrap_response_without_r_mac_authenticates_nothing() -> None:
    host, card = open_scp03(16, False, 0x03)
    card.unwrap_command(host.wrap(bytes.fromhex("80F24000024F0000")))
    answer = host.unwrap_response(card.wrap_response(b"\x01\x90\x00"))
    assert answer.sw == 0x9000 and answer.data == b"\x01" and not answer.authenticated


@pytest.mark.parametrize("scp", [3, 2])
def test_a_card_answering_another_key_version_is_accepted_when_its_cryptogram_verifies(scp: int) -> None:
    """Cards that ignore P1 of INITIALIZE UPDATE answer with their own key version. When the card
    cryptogram verifies with the host's keys, the host accepts and records the mismatch; with other
    keys the cryptogram still fails (GP 2.3.1 §11.13.2)."""
    key = os.urandom(16)
    card_keys = StaticKeys(key, key, key, 0x30 if scp == 3 else 0x20)
    for host_key, verifies in ((key, True), (os.urandom(16), False)):
        asked = StaticKeys(host_key, host_key, host_key, card_keys.version + 1)
        if scp == 3:
            card: Any = CardSCP03(card_keys, i=0x70, sd_aid=ISD_AID, sequence_counter=1)
            host: Any = SCP03(asked, 0x33, sd_aid=ISD_AID)
        else:
            card = CardSCP02(card_keys, i=0x55, sd_aid=ISD_AID, sequence_counter=1)
            host = SCP02(asked, 0x13, i=0x55, sd_aid=ISD_AID)
        iu = bytearray(host.initialize_update())
        assert iu[2] == asked.version
        iu[2] = 0x00  # the card ignores P1 and uses its current key set
        response = card.initialize_update(bytes(iu))
        if not verifies:
            with pytest.raises(AuthenticationError):
                host.external_authenticate(response)
            continue
        assert card.external_authenticate(host.external_authenticate(response)) == b"\x90\x00"
        assert host.key_version_mismatch and host.key_version == card_keys.version
        assert host.requested_key_version == asked.version
