"""Host <-> card round trips for SCP11a, SCP11b and SCP11c on P-256 (AES-128) and P-384 (AES-256),
with GP (7F21) and X.509 OCE chains, pipelining, PUT KEY under S-DEK, and the SD's chain."""

from __future__ import annotations

import datetime as dt
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gp.apdu import CommandAPDU
from gp.keys import encode_put_key_symmetric, kcv_aes
from gp.scp11 import (
    CertificateAuthority,
    Curve,
    KeyPair,
    SCP11a,
    SCP11b,
    SCP11c,
    SCP11StateError,
    SCP11Variant,
    parse_certificates,
    verify_chain,
)
from gp.scp11.constants import Tag
from gp.tlv import decode_one
from tests.gp.scp11_world import EXPIRES, TODAY, World, exchange, handshake, seeded

VARIANTS = list(SCP11Variant)
CURVES = [Curve.P256, Curve.P384]


@pytest.fixture(scope="module", params=CURVES, ids=lambda c: c.name)
def world(request: pytest.FixtureRequest) -> World:
    return World(request.param)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.label)
def test_handshake_then_secured_commands_both_ways(world: World, variant: SCP11Variant) -> None:
    card = world.card()
    host = world.host(variant)
    handshake(host, card)
    assert host.is_authenticated and card.is_authenticated
    assert len(host.session_keys.s_enc) == (16 if world.curve is Curve.P256 else 32)
    assert card.security_level == host.security_level == (0xB3 if variant.authenticates_oce else 0x33)
    for i in range(3):
        plain = CommandAPDU(0x80, 0xE2, 0x00, 0x00, bytes(range(i * 40)), le=256).to_bytes()
        seen, got = exchange(host, card, plain, bytes(range(i * 50)) + b"\x90\x00")
        assert seen == plain
        assert got == bytes(range(i * 50)) + b"\x90\x00"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.label)
def test_pipelined_batch_unwraps_in_order(world: World, variant: SCP11Variant) -> None:
    card = world.card()
    host = world.host(variant)
    handshake(host, card)
    batch = [host.wrap(bytes((0x80, 0xE8, 0x00, n, 1, n))) for n in range(5)]
    answers = [card.wrap_response(bytes((card.unwrap_command(c)[3],)) + b"\x90\x00") for c in batch]
    results = [host.unwrap_response(a) for a in answers]
    assert [r.data for r in results] == [bytes((n,)) for n in range(5)]
    assert all(r.authenticated and r.sw == 0x9000 for r in results)


def test_scp11c_answers_its_static_key_and_depends_on_the_host_randomness_only(world: World) -> None:
    """Amd F §3.1.3: no card ephemeral key; the same OCE ephemeral key gives the same session."""
    answers = []
    for card_random in ("one", "two"):
        card = world.card(random=seeded(card_random))
        host = world.host(SCP11Variant.C, ephemeral_private_key=12345)
        answers.append(handshake(host, card))
        assert answers[-1][3 : 3 + world.curve.point_length] == world.sd_keys[SCP11Variant.C].public_point
    assert answers[0] == answers[1]


@pytest.mark.parametrize("variant", [SCP11Variant.A, SCP11Variant.B], ids=lambda v: v.label)
def test_scp11a_and_b_sessions_depend_on_the_card_randomness(world: World, variant: SCP11Variant) -> None:
    answers = {
        handshake(world.host(variant, ephemeral_private_key=12345), world.card(random=seeded(r)))
        for r in ("one", "two")
    }
    assert len(answers) == 2


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.label)
def test_put_key_under_the_session_dek(world: World, variant: SCP11Variant) -> None:
    card = world.card()
    host = world.host(variant)
    handshake(host, card)
    new = [bytes([k]) * 16 for k in (1, 2, 3)]
    data = encode_put_key_symmetric(0x30, new, host.encrypt_key, algorithm="aes")
    plain = bytes((0x80, 0xD8, 0x00, 0x81, len(data))) + data + b"\x00"
    seen = card.unwrap_command(host.wrap(plain))
    assert seen == plain
    if variant is SCP11Variant.C:
        assert not card.allows(seen)  # Amd F §3.1.3: no PUT KEY in a replayable session
        return
    assert card.allows(seen)
    decoded = card.decode_put_key(seen[5:-1])
    assert [c.value for c in decoded.components] == new
    assert all(c.kcv == kcv_aes(k)[:3] for c, k in zip(decoded.components, new, strict=True))


@pytest.mark.parametrize("x509", [False, True], ids=["gp-7f21", "x509"])
def test_scp11a_with_a_chain_through_an_intermediate_ca(x509: bool) -> None:
    world = World(Curve.P256, x509=x509)
    sub_keys = KeyPair.generate(Curve.P256, seeded("sub-ca"))
    if x509:
        from gp.scp11.certificates import KeyUsage

        sub_cert = world.oce_ca.issue_x509(
            serial_number=7,
            subject_name="bank sub CA",
            subject_identifier=b"\x5b\x01",
            public_key=sub_keys.public_key,
            key_usage=KeyUsage.SIGNATURE_VERIFICATION,
            not_before=dt.date(2025, 1, 1),
            not_after=EXPIRES,
        )
        sub = CertificateAuthority(sub_keys, b"\x5b\x01", "bank sub CA")
    else:
        sub, sub_cert = world.oce_ca.sub_ca(sub_keys, b"\x5b\x01", serial_number=b"\x07", expiration_date=EXPIRES)
    world.oce_chain = [sub_cert, world.issue_oce(sub, world.oce_keys)]
    host = world.host(SCP11Variant.A)
    psos = host.perform_security_operation()
    assert [p[3] for p in psos] == [0x81, 0x01]  # P2 b8: more certificates follow
    card = world.card()
    handshake(world.host(SCP11Variant.A), card)
    assert card.is_authenticated


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.label)
def test_sd_certificate_store_verifies_against_the_card_ca(world: World, variant: SCP11Variant) -> None:
    """What a host does before SCP11b: read BF21, check it against the agency's card CA, take
    PK.SD.ECKA from the leaf."""
    card = world.card()
    store = card.keys[(0x01, variant.value)].certificate_store()
    obj, _ = decode_one(store)
    assert obj.tag == Tag.CERTIFICATE_STORE
    leaf = verify_chain(parse_certificates(obj.value), world.card_ca.trust_anchor(), TODAY)
    assert leaf.public_key_point == world.sd_keys[variant].public_point


def test_contract_signature_and_defaults() -> None:
    world = World(Curve.P256)
    point = world.sd_keys[SCP11Variant.B].public_point
    ch = SCP11b(sd_public_key=point, kvn=0x01, kid=0x13, key_usage=0x3C, ephemeral_private_key=None)
    command = ch.internal_authenticate()
    assert command[:4] == bytes.fromhex("80880113")
    card = world.card()
    ch.complete(card.process(command))
    assert ch.security_level == 0x33
    assert (
        ch.unwrap(card.wrap_response(b"\x90\x00") if card.unwrap_command(ch.wrap(b"\x80\xca\x00\x66\x00")) else b"")
        == b"\x90\x00"
    )
    assert "hidden" in repr(ch.session_keys) and ch.session_keys.s_enc.hex() not in repr(ch)
    assert isinstance(world.host(SCP11Variant.A), SCP11a) and isinstance(world.host(SCP11Variant.C), SCP11c)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.label)
def test_channel_continues_in_another_process_from_its_session_state(world: World, variant: SCP11Variant) -> None:
    """DESIGN §7b: open() returns the first command and a sealed state, continue() completes and
    wraps, finish() unwraps; each step may run in a different process."""
    cls = {SCP11Variant.A: SCP11a, SCP11Variant.B: SCP11b, SCP11Variant.C: SCP11c}[variant]
    card = world.card()
    host = world.host(variant)
    if isinstance(host, SCP11b):
        command = host.internal_authenticate()
    else:
        for pso in host.perform_security_operation():
            assert card.process(pso) == b"\x90\x00"
        command = host.mutual_authenticate()
    sent = host.session_state()
    answer = card.process(command)
    oce = {"oce_private_key": world.oce_keys.private_key} if variant.authenticates_oce else {}
    if variant.authenticates_oce:
        with pytest.raises(SCP11StateError):
            cls.from_session_state(sent)
    resumed = cls.from_session_state(sent, **oce)
    resumed.complete(answer)
    batch = [resumed.wrap(bytes((0x80, 0xCA, 0x00, n, 0x00))) for n in (1, 2)]
    saved = resumed.session_state()
    assert "ephemeral_private_key" not in saved and saved["pending"]
    answers = [card.wrap_response(card.unwrap_command(c)[3:4] + b"\x90\x00") for c in batch]
    finished = cls.from_session_state(saved)
    assert [finished.unwrap(a) for a in answers] == [b"\x01\x90\x00", b"\x02\x90\x00"]
    assert finished.session_keys.s_dek == card.session_dek


def test_malformed_or_foreign_session_state_is_refused() -> None:
    world = World(Curve.P256)
    state = world.host(SCP11Variant.B).session_state()
    with pytest.raises(SCP11StateError):
        SCP11a.from_session_state(state)
    with pytest.raises(SCP11StateError):
        SCP11b.from_session_state({**state, "state": "open"})
    with pytest.raises(SCP11StateError):
        SCP11b.from_session_state({k: v for k, v in state.items() if k != "kvn"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variant=st.sampled_from(VARIANTS),
    usage=st.sampled_from([0x3C, 0x34, 0x1C]),
    commands=st.lists(
        st.tuples(
            st.integers(0, 0xFF), st.binary(max_size=239), st.none() | st.integers(1, 256), st.binary(max_size=200)
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_any_command_and_response_survive_the_channel(
    variant: SCP11Variant, usage: int, commands: list[tuple[int, bytes, int | None, bytes]]
) -> None:
    world = _p256_world()
    card = world.card()
    host = world.host(variant, key_usage=usage)
    handshake(host, card)
    for ins, data, le, reply in commands:
        plain = CommandAPDU(0x80, ins, 0x00, 0x00, data, le).to_bytes()
        seen, got = exchange(host, card, plain, reply + b"\x90\x00")
        assert seen == plain
        assert got == reply + b"\x90\x00"


@cache
def _p256_world() -> World:
    return World(Curve.P256)
