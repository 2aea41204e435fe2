"""Failed EXTERNAL AUTHENTICATEs block the key set after N = DEFAULT_AUTH_LIMIT (3) in a row."""

from __future__ import annotations

import pytest

from cardsim.constants import DEFAULT_AUTH_LIMIT, DEFAULT_KEY, ISD_AID
from cardsim.transport import InProcessCard
from gp import commands as c
from gp.keys import StaticKeys
from gp.scp import SCP02, SCP03
from tests.cardsim.hostlib import HostSession, sw_of


def _channel(scp: int) -> SCP02 | SCP03:
    if scp == 3:
        return SCP03(StaticKeys.single(DEFAULT_KEY, 0x30), 0x33, sd_aid=ISD_AID)
    return SCP02(StaticKeys.single(DEFAULT_KEY, 0x20), 0x03)


def _failed_authentication(card: InProcessCard, scp: int) -> int:
    """A host that gets the host cryptogram wrong (flipped bit); returns the card's SW."""
    card.transmit(c.select())
    ch = _channel(scp)
    r = card.transmit(ch.initialize_update())
    assert sw_of(r) == 0x9000
    ea = bytearray(ch.external_authenticate(r))
    ea[5] ^= 0x01  # first byte of the host cryptogram
    return sw_of(card.transmit(bytes(ea)))


@pytest.mark.parametrize("scp", [3, 2])
def test_key_set_blocked_after_n_failures(make_card, scp) -> None:
    assert DEFAULT_AUTH_LIMIT == 3
    card = make_card(scp=scp)
    # failures below the limit are forgiven by a successful authentication
    for _ in range(DEFAULT_AUTH_LIMIT - 1):
        assert _failed_authentication(card, scp) == 0x6300
    HostSession(card.transmit, scp=scp).open()
    for _ in range(DEFAULT_AUTH_LIMIT):
        assert _failed_authentication(card, scp) == 0x6300
    # blocked: INITIALIZE UPDATE answers 6983, also after a power cycle (the counter is persistent)
    card.transmit(c.select())
    assert sw_of(card.transmit(_channel(scp).initialize_update())) == 0x6983
    again = InProcessCard(card.path)
    again.transmit(c.select())
    assert sw_of(again.transmit(_channel(scp).initialize_update())) == 0x6983
    with pytest.raises(AssertionError):
        HostSession(again.transmit, scp=scp).open()


def test_limit_is_per_key_set_and_configurable(make_card) -> None:
    card = make_card(auth_limit=1)
    assert _failed_authentication(card, 3) == 0x6300
    card.transmit(c.select())
    assert sw_of(card.transmit(_channel(3).initialize_update())) == 0x6983
    # another key set of the same SD is not blocked (it was added before the failure... on a fresh card)
    card2 = make_card(auth_limit=1)
    s = HostSession(card2.transmit).open()
    from gp.keys import encode_put_key_symmetric

    s.ok(
        c.put_key(
            0x31,
            encode_put_key_symmetric(0x31, StaticKeys.single(bytes(16), 0x31), s.channel.encrypt_key, algorithm="aes")[
                1:
            ],
        )
    )
    assert _failed_authentication(card2, 3) == 0x6300
    HostSession(card2.transmit, key=bytes(16), kvn=0x31).open()
