"""Fuzzed certificate chains never crash either side: the parser and the chain check raise only
gp errors, a mutated chain is never accepted for another key, and the card answers every
PERFORM SECURITY OPERATION with a status word.

Two layers: a seeded mutation loop over real GP (7F21) and X.509 chains, 10,000 cases as the
issue asks (cheap: one parse and at most a few ECDSA checks each), and hypothesis properties at
2,000 examples each, enough for CI time (set ECARD_SCP11_FUZZ_EXAMPLES=10000 for a long run).
"""

from __future__ import annotations

import os
import random
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gp.errors import GPError
from gp.scp11 import Curve, KeyPair, SCP11Variant, parse_certificates, verify_chain
from gp.scp11.constants import Tag
from gp.tlv import encode_tlv
from tests.gp.scp11_world import EXPIRES, TODAY, World, seeded

N_MUTATIONS = 10_000
EXAMPLES = int(os.environ.get("ECARD_SCP11_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def _worlds() -> list[tuple[World, bytes]]:
    out = []
    for x509 in (False, True):
        world = World(Curve.P256, x509=x509)
        sub_keys = KeyPair.generate(Curve.P256, seeded("fuzz-sub"))
        if x509:
            from gp.scp11 import CertificateAuthority, KeyUsage

            sub_cert = world.oce_ca.issue_x509(
                serial_number=9,
                subject_name="sub",
                subject_identifier=b"\x5b\x02",
                public_key=sub_keys.public_key,
                key_usage=KeyUsage.SIGNATURE_VERIFICATION,
                not_before=TODAY,
                not_after=EXPIRES,
            )
            sub = CertificateAuthority(sub_keys, b"\x5b\x02")
        else:
            sub, sub_cert = world.oce_ca.sub_ca(sub_keys, b"\x5b\x02", serial_number=b"\x09", expiration_date=EXPIRES)
        world.oce_chain = [sub_cert, world.issue_oce(sub, world.oce_keys)]
        out.append((world, b"".join(c.encode() for c in world.oce_chain)))
    return out


def _check(world: World, data: bytes) -> None:
    """Parse and verify; only gp errors, and an accepted chain certifies the genuine OCE key."""
    try:
        leaf = verify_chain(parse_certificates(data), world.anchor(), TODAY)
    except GPError:
        return
    assert leaf.public_key_point == world.oce_keys.public_point


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.randrange(256)
        elif op == 2:
            del buf[i : i + rng.randint(1, 8)]
        elif op == 3:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            buf = buf[: rng.randrange(len(buf) + 1)]
    return bytes(buf)


def test_mutated_chains_raise_only_gp_errors_and_never_certify_another_key() -> None:
    rng = random.Random(16)
    worlds = _worlds()
    for n in range(N_MUTATIONS):
        world, chain = worlds[n % len(worlds)]
        mutated = _mutate(rng, chain)
        try:
            _check(world, mutated)
        except Exception as exc:  # pragma: no cover - the message names the case to replay
            raise AssertionError(f"iteration {n}: {type(exc).__name__}: {exc} on {mutated.hex()}") from exc


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(_worlds()[0][0], data)


_FIELD_TAGS = [t.value for t in Tag] + [0x01, 0x5F, 0x7F, 0x9F7F, 0xBF0C]


@st.composite
def _gp_bodies(draw: st.DrawFn) -> bytes:
    """7F21 objects made of plausible fields in any order, lengths and contents."""
    fields = draw(st.lists(st.tuples(st.sampled_from(_FIELD_TAGS), st.binary(max_size=80)), max_size=14))
    body = b""
    for tag, value in fields:
        if tag == Tag.PUBLIC_KEY and draw(st.booleans()):
            value = encode_tlv(Tag.PUBLIC_KEY_Q, draw(st.binary(min_size=1, max_size=97))) + encode_tlv(
                Tag.KEY_PARAMETER_REFERENCE, draw(st.binary(max_size=2))
            )
        try:
            body += encode_tlv(tag, value)
        except GPError:
            continue
    return encode_tlv(Tag.CERTIFICATE, body)


@FUZZ
@given(st.lists(_gp_bodies(), min_size=1, max_size=3))
def test_structured_gp_certificates(chain: list[bytes]) -> None:
    _check(_worlds()[0][0], b"".join(chain))


@FUZZ
@given(st.data())
def test_card_answers_every_fuzzed_certificate_upload_with_a_status_word(data: st.DataObject) -> None:
    world, chain = _worlds()[data.draw(st.integers(0, 1))]
    card = world.card()
    pso = world.host(SCP11Variant.A).perform_security_operation()
    for command in pso:
        body = data.draw(st.sampled_from([command, _mutate(random.Random(data.draw(st.integers())), command)]))
        answer = card.process(body)
        assert len(answer) == 2
        if answer != b"\x90\x00":
            assert not card.is_authenticated
            break
    assert chain
