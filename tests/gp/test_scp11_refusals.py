"""Every SCP11 refusal and its status word (see gp/scp11/card.py for the table and its sources):
flipped bits anywhere in the handshake and the secure messaging, a certificate of the wrong CA,
an expired or not yet effective one, a wrong key usage, a point not on the curve, a missing key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from gp.apdu import SW, CommandAPDU
from gp.errors import (
    EncodingError,
    GPError,
    MACError,
    MalformedResponseError,
    RemoteProtocolError,
    SecureChannelError,
)
from gp.scp11 import (
    CertificateAuthority,
    Curve,
    InvalidPointError,
    KeyPair,
    KeyUsage,
    ReceiptError,
    SCP11b,
    SCP11StateError,
    SCP11Variant,
)
from gp.scp11.constants import KeyUsageQualifier
from gp.scp11.handshake import AuthenticateRequest
from gp.scp_card import sw_for_error
from tests.gp.scp11_world import EXPIRES, TODAY, World, handshake, seeded

OK = b"\x90\x00"
CERT_FAILED = SW.CERTIFICATE_VERIFICATION_FAILED


def _sw(answer: bytes) -> int:
    return int.from_bytes(answer[-2:], "big")


def _flips(data: bytes) -> list[bytes]:
    return [data[:i] + bytes((data[i] ^ (1 << b),)) + data[i + 1 :] for i in range(len(data)) for b in range(8)]


def _harmless(original: bytes, flipped: bytes) -> bool:
    """CLA 80 <-> 84: GPC 2.3.1 §11.1.4 lets the handshake commands come with or without the secure
    messaging indication, and the card accepts both. The receipt does not cover the header, so
    this is the one change that goes through; it changes nothing of the session."""
    return flipped[0] ^ original[0] == 0x04 and flipped[1:] == original[1:]


def off_curve(point: bytes) -> bytes:
    """Same X, Y + 1: not on the curve (y^2 = x^3 + ax + b has at most two roots y, -y)."""
    n = (len(point) - 1) // 2
    return point[: 1 + n] + ((int.from_bytes(point[1 + n :], "big") + 1) % 2 ** (8 * n)).to_bytes(n, "big")


@pytest.fixture(scope="module", params=[Curve.P256, Curve.P384], ids=lambda c: c.name)
def world(request: pytest.FixtureRequest) -> World:
    return World(request.param)


# --- flipped bits ----------------------------------------------------------------


def test_every_flipped_bit_of_internal_authenticate_is_refused_or_fails_the_receipt(world: World) -> None:
    """No single-bit change of the command yields a session: the card refuses it (SW named below)
    or answers keys the host cannot confirm (the receipt covers the command as sent)."""
    command = world.host(SCP11Variant.B).internal_authenticate()
    refused: set[int] = set()
    for flipped in _flips(command):
        card = world.card()
        answer = card.process(flipped)
        host = world.host(SCP11Variant.B)
        host.internal_authenticate()
        if answer[-2:] != OK:
            assert not card.is_authenticated
            refused.add(_sw(answer))
            continue
        if _harmless(command, flipped):
            host.complete(answer)
            continue
        with pytest.raises(GPError):
            host.complete(answer)
        assert not host.is_authenticated
    assert refused <= {
        SW.CLA_NOT_SUPPORTED,
        SW.INS_NOT_SUPPORTED,
        SW.REFERENCED_DATA_NOT_FOUND,
        SW.WRONG_DATA,
        SW.WRONG_LENGTH,
    }
    assert SW.WRONG_DATA in refused  # among others: ePK.OCE no longer on the curve


@pytest.mark.parametrize("variant", list(SCP11Variant), ids=lambda v: v.label)
def test_every_flipped_bit_of_the_card_answer_fails_the_host(world: World, variant: SCP11Variant) -> None:
    card = world.card()
    host = world.host(variant)
    answer = handshake(host, card)
    for flipped in _flips(answer):
        again = world.host(variant, ephemeral_private_key=host._ephemeral.private_numbers().private_value)
        if variant is SCP11Variant.B:
            again.internal_authenticate()
        else:
            again.mutual_authenticate()
        with pytest.raises(GPError) as caught:
            again.complete(flipped)
        assert not again.is_authenticated
        with pytest.raises(SCP11StateError):
            again.wrap(b"\x80\xca\x00\x66\x00")
        if flipped[:-2] != answer[:-2]:
            assert isinstance(caught.value, ReceiptError | InvalidPointError | GPError)


def test_a_bad_receipt_is_a_receipt_error(world: World) -> None:
    card = world.card()
    host = world.host(SCP11Variant.B)
    answer = card.process(host.internal_authenticate())
    bad = answer[:-3] + bytes((answer[-3] ^ 0x01,)) + answer[-2:]
    with pytest.raises(ReceiptError):
        host.complete(bad)


@pytest.mark.parametrize("variant", [SCP11Variant.A, SCP11Variant.C], ids=lambda v: v.label)
def test_every_flipped_bit_of_the_certificate_upload_and_mutual_authenticate_is_refused(
    variant: SCP11Variant,
) -> None:
    world = World(Curve.P256)
    host = world.host(variant)
    (pso,) = host.perform_security_operation()
    ma = host.mutual_authenticate()
    for which in ("pso", "ma"):
        for flipped in _flips(pso if which == "pso" else ma):
            card = world.card()
            first = card.process(flipped if which == "pso" else pso)
            second = card.process(flipped if which == "ma" else ma) if first == OK else first
            if second[-2:] == OK and _harmless(pso if which == "pso" else ma, flipped):
                continue
            if second[-2:] == OK:
                fresh = world.host(variant, ephemeral_private_key=host._ephemeral.private_numbers().private_value)
                fresh.mutual_authenticate()
                with pytest.raises(GPError):
                    fresh.complete(second)
            else:
                assert not card.is_authenticated
                assert _sw(second) in {
                    SW.CLA_NOT_SUPPORTED,
                    SW.INS_NOT_SUPPORTED,
                    SW.REFERENCED_DATA_NOT_FOUND,
                    SW.WRONG_DATA,
                    SW.WRONG_LENGTH,
                    SW.CONDITIONS_NOT_SATISFIED,
                    SW.FUNCTION_NOT_SUPPORTED,
                    CERT_FAILED,
                }


@pytest.mark.parametrize("variant", list(SCP11Variant), ids=lambda v: v.label)
def test_a_flipped_bit_in_a_secured_command_closes_the_card_session_with_6982(
    world: World, variant: SCP11Variant
) -> None:
    card = world.card()
    host = world.host(variant)
    handshake(host, card)
    wrapped = host.wrap(CommandAPDU(0x80, 0xE2, 0x00, 0x00, bytes(20)).to_bytes())
    for flipped in _flips(wrapped)[40:]:  # every bit of the data field and C-MAC
        card = world.card()
        fresh = world.host(variant, ephemeral_private_key=host._ephemeral.private_numbers().private_value)
        handshake(fresh, card)
        with pytest.raises(GPError) as caught:
            card.unwrap_command(flipped)
        assert sw_for_error(caught.value) in (SW.SECURITY_STATUS_NOT_SATISFIED, SW.WRONG_LENGTH)
        assert not card.is_authenticated
        with pytest.raises(SecureChannelError):
            card.unwrap_command(fresh.wrap(b"\x80\xca\x00\x66\x00"))


@pytest.mark.parametrize("variant", list(SCP11Variant), ids=lambda v: v.label)
def test_a_flipped_bit_in_a_secured_response_closes_the_host_channel(world: World, variant: SCP11Variant) -> None:
    card = world.card()
    host = world.host(variant)
    handshake(host, card)
    card.unwrap_command(host.wrap(b"\x80\xca\x00\x66\x00"))
    answer = card.wrap_response(b"\x01\x02\x03\x90\x00")
    with pytest.raises(MACError):
        host.unwrap(answer[:5] + bytes((answer[5] ^ 0x80,)) + answer[6:])
    with pytest.raises(SCP11StateError):
        host.wrap(b"\x80\xca\x00\x66\x00")


# --- certificates ------------------------------------------------------------------


def _card_answer_to_chain(world: World, chain: list[object], variant: SCP11Variant = SCP11Variant.A) -> list[int]:
    world.oce_chain = chain  # type: ignore[assignment]
    card = world.card()
    host = world.host(variant)
    answers = []
    for pso in host.perform_security_operation():  # a host stops at the first refusal
        answers.append(_sw(card.process(pso)))
        if answers[-1] != SW.SUCCESS:
            return answers
    if answers[-1] == SW.SUCCESS:
        answers.append(_sw(card.process(host.mutual_authenticate())))
    return answers


@pytest.mark.parametrize("x509", [False, True], ids=["gp-7f21", "x509"])
class TestCertificateRefusals:
    def test_signed_by_another_ca_with_the_same_identifier(self, x509: bool) -> None:
        world = World(Curve.P256, x509=x509)
        rogue = CertificateAuthority.generate(world.oce_ca.identifier, Curve.P256, "rogue", seeded("rogue"))
        assert _card_answer_to_chain(world, [world.issue_oce(rogue, world.oce_keys)]) == [CERT_FAILED]

    def test_signed_by_another_ca(self, x509: bool) -> None:
        world = World(Curve.P256, x509=x509)
        assert _card_answer_to_chain(world, [world.issue_oce(world.card_ca, world.oce_keys)]) == [CERT_FAILED]

    def test_expired(self, x509: bool) -> None:
        world = World(Curve.P256, x509=x509)
        old = world.issue_oce(world.oce_ca, world.oce_keys, expires=TODAY - dt.timedelta(days=1))
        assert _card_answer_to_chain(world, [old]) == [CERT_FAILED]

    def test_not_yet_effective(self, x509: bool) -> None:
        world = World(Curve.P256, x509=x509)
        early = world.issue_oce(world.oce_ca, world.oce_keys, effective=TODAY + dt.timedelta(days=1))
        assert _card_answer_to_chain(world, [early]) == [CERT_FAILED]

    def test_valid_on_its_last_day(self, x509: bool) -> None:
        world = World(Curve.P256, x509=x509)
        last = world.issue_oce(world.oce_ca, world.oce_keys, expires=TODAY, effective=TODAY)
        assert _card_answer_to_chain(world, [last]) == [SW.SUCCESS, SW.SUCCESS]

    def test_leaf_without_key_agreement_usage(self, x509: bool) -> None:
        world = World(Curve.P256, x509=x509)
        signer = world.issue_oce(world.oce_ca, world.oce_keys, usage=KeyUsage.SIGNATURE_VERIFICATION)
        assert _card_answer_to_chain(world, [signer]) == [CERT_FAILED]

    def test_intermediate_without_signature_usage(self, x509: bool) -> None:
        world = World(Curve.P256, x509=x509)
        sub_keys = KeyPair.generate(Curve.P256, seeded("sub"))
        sub = CertificateAuthority(sub_keys, b"\x0c\xe1", "sub")  # the OCE cert's subject id
        not_a_ca = world.issue_oce(world.oce_ca, sub_keys, usage=KeyUsage.KEY_AGREEMENT)
        assert _card_answer_to_chain(world, [not_a_ca, world.issue_oce(sub, world.oce_keys)]) == [CERT_FAILED]


def test_unknown_trust_anchor_reference_is_6a88() -> None:
    world = World(Curve.P256)
    card = world.card(anchors=[world.oce_ca.trust_anchor(0x11, 0x01)])  # not at the KVN the host names
    (pso,) = world.host(SCP11Variant.A).perform_security_operation()
    assert _sw(card.process(pso)) == SW.REFERENCED_DATA_NOT_FOUND


def test_certificate_with_a_key_not_on_the_curve_is_6a80() -> None:
    world = World(Curve.P256)
    cert = world.oce_chain[0].encode()
    point = world.oce_keys.public_point
    tampered = cert.replace(point, off_curve(point))
    (pso,) = world.host(SCP11Variant.A, certificates=[tampered]).perform_security_operation()
    assert _sw(world.card().process(pso)) == SW.WRONG_DATA


def test_malformed_certificate_is_6a80() -> None:
    world = World(Curve.P256)
    (pso,) = world.host(SCP11Variant.A, certificates=[b"\x7f\x21\x03\x93\x01\x01"]).perform_security_operation()
    assert _sw(world.card().process(pso)) == SW.WRONG_DATA


def test_expired_certificate_on_a_card_whose_date_moved_on() -> None:
    world = World(Curve.P256)
    card = world.card(today=EXPIRES + dt.timedelta(days=1))
    (pso,) = world.host(SCP11Variant.A).perform_security_operation()
    assert _sw(card.process(pso)) == CERT_FAILED


# --- the authenticate commands -----------------------------------------------------


def _authenticate(world: World, variant: SCP11Variant, request: AuthenticateRequest) -> bytes:
    ins = 0x88 if variant is SCP11Variant.B else 0x82
    card = world.card()
    if variant is not SCP11Variant.B:
        for pso in world.host(variant).perform_security_operation():
            assert card.process(pso) == OK
    return card.process(CommandAPDU(0x80, ins, 0x01, variant.value, request.encode()).to_bytes())


@pytest.mark.parametrize("variant", list(SCP11Variant), ids=lambda v: v.label)
def test_ephemeral_key_not_on_the_curve_is_6a80(world: World, variant: SCP11Variant) -> None:
    point = off_curve(world.oce_keys.public_point)
    request = AuthenticateRequest(variant, KeyUsageQualifier(0x3C), 16, point)
    assert _sw(_authenticate(world, variant, request)) == SW.WRONG_DATA


def test_host_refuses_an_sd_key_not_on_the_curve(world: World) -> None:
    with pytest.raises(InvalidPointError):
        SCP11b(off_curve(world.sd_keys[SCP11Variant.B].public_point))


def test_host_refuses_a_card_ephemeral_key_not_on_the_curve(world: World) -> None:
    card = world.card()
    host = world.host(SCP11Variant.B)
    answer = card.process(host.internal_authenticate())
    n = world.curve.point_length
    bad = answer[:3] + off_curve(answer[3 : 3 + n]) + answer[3 + n :]
    with pytest.raises(MalformedResponseError) as caught:  # the card's reply: a remote error
        host.complete(bad)
    assert isinstance(caught.value, RemoteProtocolError)
    assert isinstance(caught.value.__cause__, InvalidPointError)


@pytest.mark.parametrize(
    ("change", "sw"),
    [
        (lambda r: AuthenticateRequest(SCP11Variant.A, r.key_usage, r.key_length, r.ephemeral_point), SW.WRONG_DATA),
        (lambda r: AuthenticateRequest(r.variant, r.key_usage, 17, r.ephemeral_point), SW.WRONG_DATA),
    ],
    ids=["variant-does-not-match-the-key", "key-length-17"],
)
def test_authenticate_data_the_card_does_not_support(
    world: World, change: Callable[[AuthenticateRequest], AuthenticateRequest], sw: int
) -> None:
    good = AuthenticateRequest(SCP11Variant.B, KeyUsageQualifier(0x3C), 16, world.oce_keys.public_point)
    assert _sw(_authenticate(world, SCP11Variant.B, change(good))) == sw


def test_key_usage_type_and_host_id_options_not_supported_are_6a80(world: World) -> None:
    good = AuthenticateRequest(SCP11Variant.B, KeyUsageQualifier(0x3C), 16, world.oce_keys.public_point).encode()
    for old, new in (
        (b"\x95\x01\x3c", b"\x95\x01\x38"),
        (b"\x80\x01\x88", b"\x80\x01\x80"),
        (b"\x90\x02\x11\x00", b"\x90\x02\x11\x04"),
    ):
        card = world.card()
        assert _sw(card.process(CommandAPDU(0x80, 0x88, 0x01, 0x13, good.replace(old, new)).to_bytes())) == 0x6A80


def test_mutual_authenticate_without_a_certificate_chain_is_6985(world: World) -> None:
    card = world.card()
    assert _sw(card.process(world.host(SCP11Variant.A).mutual_authenticate())) == SW.CONDITIONS_NOT_SATISFIED


def test_a_verified_chain_serves_one_mutual_authenticate_only(world: World) -> None:
    card = world.card()
    handshake(world.host(SCP11Variant.A), card)
    assert _sw(card.process(world.host(SCP11Variant.A).mutual_authenticate())) == SW.CONDITIONS_NOT_SATISFIED
    assert not card.is_authenticated


@pytest.mark.parametrize(("ins", "kid"), [(0x88, 0x11), (0x82, 0x13), (0x88, 0x14)], ids=["IA-11a", "MA-11b", "IA-14"])
def test_authenticate_names_a_key_the_sd_does_not_hold_for_it(world: World, ins: int, kid: int) -> None:
    request = AuthenticateRequest(SCP11Variant.B, KeyUsageQualifier(0x3C), 16, world.oce_keys.public_point)
    card = world.card()
    assert _sw(card.process(CommandAPDU(0x80, ins, 0x01, kid, request.encode()).to_bytes())) == 0x6A88


def test_a_refused_handshake_ends_the_previous_session(world: World) -> None:
    card = world.card()
    host = world.host(SCP11Variant.B)
    handshake(host, card)
    assert _sw(card.process(b"\x80\x88\x01\x13\x02\x00\x00")) == SW.WRONG_DATA
    assert not card.is_authenticated
    with pytest.raises(SecureChannelError):
        card.unwrap_command(host.wrap(b"\x80\xca\x00\x66\x00"))


def test_host_misuse_is_a_state_error(world: World) -> None:
    host = world.host(SCP11Variant.B)
    with pytest.raises(SCP11StateError):
        host.wrap(b"\x80\xca\x00\x66\x00")
    with pytest.raises(SCP11StateError):
        host.complete(b"\x90\x00")
    host.internal_authenticate()
    with pytest.raises(SCP11StateError):
        host.internal_authenticate()
    with pytest.raises(SCP11StateError):
        SCP11b(world.sd_keys[SCP11Variant.B].public_point, key_usage=0x38)
    with pytest.raises(SCP11StateError):
        world.host(SCP11Variant.A, certificates=[])


def test_scp11c_refuses_key_and_lifecycle_changes(world: World) -> None:
    card = world.card()
    handshake(world.host(SCP11Variant.C), card)
    assert not card.allows(b"\x80\xd8\x00\x81\x01\x00")
    assert not card.allows(b"\x80\xf0\x80\x07\x00")
    assert not card.allows(b"\x80\xe4\x00\x00\x03\xd0\x01\x01")
    assert card.allows(b"\x80\xe4\x00\x00\x03\x4f\x01\x01")
    assert card.allows(b"\x80\xca\x00\x66\x00")


def test_scp03_external_authenticate_is_not_taken_for_mutual_authenticate(world: World) -> None:
    card = world.card()
    assert not card.handles(bytes.fromhex("8482330010") + bytes(16))  # EXTERNAL AUTHENTICATE: P2 00
    assert card.handles(world.host(SCP11Variant.A).mutual_authenticate())
    assert card.handles(world.host(SCP11Variant.B).internal_authenticate())
    assert not card.handles(b"\x80\xca")


def test_an_answer_without_receipt_is_refused(world: World) -> None:
    """Cards older than Amd F v1.4 answered SCP11b without tag 86; gp never accepts that."""
    card = world.card()
    host = world.host(SCP11Variant.B)
    answer = card.process(host.internal_authenticate())
    with pytest.raises(MalformedResponseError) as caught:
        host.complete(answer[: 3 + world.curve.point_length] + b"\x90\x00")
    assert isinstance(caught.value.__cause__, EncodingError)
    assert not host.is_authenticated
