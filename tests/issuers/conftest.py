"""Key custody fixtures: a throw-away SoftHSM2 token and backend selection.

The PKCS#11 tests need ``softhsm2`` (``/usr/lib/softhsm/libsofthsm2.so`` and ``softhsm2-util``).
Without it they are skipped with a reason — except under CI (``CI=true``), where a missing
SoftHSM2 is a failure, not a skip.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gp.keys import StaticKeys
from issuers import keyvault
from tests.softhsm import SoftHsm, new_token

TOKEN_LABEL = "ecard-test"
USER_PIN = "1234"


@pytest.fixture(scope="session")
def softhsm() -> Iterator[SoftHsm]:
    """A fresh SoftHSM2 token ``ecard-test`` (user PIN 1234) in the process's SoftHSM2 token
    directory (tests/softhsm.py: one token directory per process)."""
    yield new_token(TOKEN_LABEL, USER_PIN)
    keyvault.reset_backends()


TEST_MASTER_KEY = secrets.token_bytes(32)


@pytest.fixture
def software_backend(settings: Any) -> Iterator[str]:
    """Custody on the software backend with a per-session random master key."""
    settings.ECARD_KEY_BACKEND = "software"
    settings.ECARD_MASTER_KEY = TEST_MASTER_KEY.hex()
    settings.ECARD_MASTER_KEY_PREVIOUS = ""
    keyvault.reset_backends()
    yield "software"
    keyvault.reset_backends()


@pytest.fixture
def pkcs11_backend(settings: Any, softhsm: SoftHsm) -> Iterator[str]:
    """Custody on the PKCS#11 backend (the SoftHSM2 token)."""
    settings.ECARD_MASTER_KEY = TEST_MASTER_KEY.hex()
    settings.ECARD_KEY_BACKEND = "pkcs11"
    settings.ECARD_PKCS11_MODULE = softhsm.module
    settings.ECARD_PKCS11_TOKEN = softhsm.token_label
    settings.ECARD_PKCS11_PIN = softhsm.pin
    keyvault.reset_backends()
    yield "pkcs11"
    keyvault.reset_backends()


@pytest.fixture(params=["software", "pkcs11"])
def key_backend(request: pytest.FixtureRequest) -> str:
    """Run the test once per backend (the PKCS#11 run needs SoftHSM2)."""
    return request.getfixturevalue(f"{request.param}_backend")


def run_scp03_session(
    card_keys: StaticKeys,
    host_keys_for: Callable[[bytes], StaticKeys],
    *,
    kdd: bytes = bytes(10),
    security_level: int = 0x33,
) -> None:
    """A full SCP03 session between the host (:class:`gp.scp.SCP03`) and an in-process card
    (:class:`gp.scp_card.CardSCP03` holding ``card_keys``): INITIALIZE UPDATE, EXTERNAL AUTHENTICATE,
    then one C-MAC/C-DEC/R-MAC/R-ENC protected command each way. ``host_keys_for(kdd)`` gives the
    host's keys once the card has answered (custody lookups, diversification). Raises on failure."""
    from gp.scp import SCP03
    from gp.scp_card import CardSCP03

    card = CardSCP03(card_keys, i=0x70, kdd=kdd)
    host_challenge = secrets.token_bytes(8)
    probe = SCP03(StaticKeys.single(bytes(16), card_keys.version), security_level, host_challenge)
    response = card.initialize_update(probe.initialize_update())
    assert response[-2:] == b"\x90\x00", response[-2:].hex()
    host = SCP03(host_keys_for(response[:10]), security_level, host_challenge)
    host.initialize_update()
    assert card.external_authenticate(host.external_authenticate(response)) == b"\x90\x00"
    plain = bytes.fromhex("80CA00660100")  # a case-4 command with one data byte
    received = card.unwrap_command(host.wrap(plain))
    assert received[1:] == plain[1 : len(received)] or received[1:4] == plain[1:4]
    answer = bytes.fromhex("660A0102030405060708090A9000")
    assert host.unwrap(card.wrap_response(answer)) == answer
