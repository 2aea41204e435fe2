"""The SCP11b known-answer exchange of ../shared (yubikit as host, checked against an independent
implementation from Amendment F), reproduced byte for byte by gp's host and by gp's card."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from gp.scp11 import CardSCP11, Curve, SCP11b, SDKey
from gp.scp11.constants import KeyUsageQualifier, SCP11Variant
from gp.scp11.crypto import derive_session_keys, ecka, private_key, public_key, x963_kdf
from gp.scp11.handshake import AuthenticateRequest, agree
from tests.shared_data import shared_path

h = bytes.fromhex


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(shared_path("testdata", "vectors", "scp11b-vector.json").read_text())
    (entry,) = data["vectors"]
    assert entry["curve"] == "P-256" and entry["session_key_bits"] == 128
    return entry


def _host(v: dict[str, Any]) -> SCP11b:
    return SCP11b(
        sd_public_key=h(v["sd_static_public"]),
        kvn=int(v["kvn"], 16),
        kid=int(v["kid"], 16),
        key_usage=int(v["key_usage"], 16),
        ephemeral_private_key=int(v["oce_ephemeral_private"], 16),
    )


def _card(v: dict[str, Any]) -> CardSCP11:
    sd = SDKey.from_scalar(Curve.P256, int(v["sd_static_private"], 16), int(v["kvn"], 16), int(v["kid"], 16))
    # the card's ephemeral scalar is drawn from `random`: pin it to the vector's
    return CardSCP11([sd], today=lambda: dt.date(2026, 1, 1), random=lambda n: h(v["sd_ephemeral_private"]))


def test_public_keys_match_the_private_ones(vector: dict[str, Any]) -> None:
    for name in ("sd_static", "sd_ephemeral", "oce_ephemeral"):
        key = private_key(Curve.P256, int(vector[f"{name}_private"], 16))
        assert key.public_key() == public_key(Curve.P256, h(vector[f"{name}_public"]))


def test_host_builds_the_internal_authenticate_command(vector: dict[str, Any]) -> None:
    assert _host(vector).internal_authenticate() == h(vector["internal_authenticate"]["command"])


def test_card_answers_the_internal_authenticate_response(vector: dict[str, Any]) -> None:
    answer = _card(vector).process(h(vector["internal_authenticate"]["command"]))
    assert answer == h(vector["internal_authenticate"]["response"])


def test_shared_secrets_kdf_and_receipt_step_by_step(vector: dict[str, Any]) -> None:
    """Each intermediate value of the vector, from both ends' keys (ECDH is symmetric)."""
    c = Curve.P256
    sd_static = private_key(c, int(vector["sd_static_private"], 16))
    sd_eph = private_key(c, int(vector["sd_ephemeral_private"], 16))
    oce_eph = private_key(c, int(vector["oce_ephemeral_private"], 16))
    shsee = h(vector["shared_secret_ephemeral_ephemeral"])
    shses = h(vector["shared_secret_ephemeral_static"])
    assert ecka(oce_eph, sd_eph.public_key()) == ecka(sd_eph, oce_eph.public_key()) == shsee
    assert ecka(oce_eph, sd_static.public_key()) == ecka(sd_static, oce_eph.public_key()) == shses
    request = AuthenticateRequest(SCP11Variant.B, KeyUsageQualifier(0x3C), 16, h(vector["oce_ephemeral_public"]))
    assert request.shared_info == h(vector["shared_info"])
    assert x963_kdf("sha256", shsee + shses, request.shared_info, 80) == h(vector["kdf_output"])
    keys = derive_session_keys(c, shsee + shses, request.shared_info, 16)
    assert (keys.receipt_key, keys.s_enc, keys.s_mac, keys.s_rmac, keys.s_dek) == tuple(
        h(vector[k]) for k in ("receipt_key", "s_enc", "s_mac", "s_rmac", "s_dek")
    )
    agreement = agree(c, request, h(vector["sd_ephemeral_public"]), shsee + shses)
    assert agreement.receipt == h(vector["receipt"])


def test_host_derives_the_session_keys_and_wraps_the_first_command(vector: dict[str, Any]) -> None:
    host = _host(vector)
    host.internal_authenticate()
    host.complete(h(vector["internal_authenticate"]["response"]))
    keys = host.session_keys
    assert keys.receipt_key == h(vector["receipt_key"])
    assert (keys.s_enc, keys.s_mac, keys.s_rmac, keys.s_dek) == tuple(
        h(vector[k]) for k in ("s_enc", "s_mac", "s_rmac", "s_dek")
    )
    assert host.receipt == h(vector["receipt"])
    first = vector["first_command"]
    assert first["encryption_counter"] == 1
    assert host.wrap(h(first["plain"])) == h(first["wrapped"])


def test_card_unwraps_the_first_command_and_answers_under_the_same_keys(vector: dict[str, Any]) -> None:
    card = _card(vector)
    card.process(h(vector["internal_authenticate"]["command"]))
    assert card.session_dek == h(vector["s_dek"])
    assert card.security_level == 0x33  # key usage 3C: C-MAC, C-DEC, R-MAC, R-ENC; OCE not authenticated
    first = vector["first_command"]
    assert card.unwrap_command(h(first["wrapped"])) == h(first["plain"])
    # and the host, with the vector's keys, accepts the card's secured answer
    host = _host(vector)
    host.internal_authenticate()
    host.complete(h(vector["internal_authenticate"]["response"]))
    host.wrap(h(first["plain"]))
    assert host.unwrap(card.wrap_response(b"\xca\xfe\x90\x00")) == b"\xca\xfe\x90\x00"
