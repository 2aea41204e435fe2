"""The sealed channel state (keyservice.channels.Sealer): bound to the bank and the session,
good for 15 minutes, opened only by the process that sealed it."""

from __future__ import annotations

import pytest

from keyservice.channels import STATE_LIFETIME, Sealer, ServiceError


def test_a_state_opens_for_its_session_until_it_expires() -> None:
    now = [1_000_000.0]
    sealer = Sealer("alpha", clock=lambda: now[0])
    state = sealer.seal("session-1", {"channel": {"s_enc": "00" * 16}})
    assert "00" * 16 not in state  # sealed, not merely encoded
    assert sealer.open("session-1", state)["channel"] == {"s_enc": "00" * 16}
    for session, sealed_by in (("session-2", sealer), ("session-1", Sealer("alpha")), ("session-1", Sealer("beta"))):
        with pytest.raises(ServiceError, match="does not open") as error:
            sealed_by.open(session, state)
        assert error.value.status == 409
    now[0] += STATE_LIFETIME + 1
    with pytest.raises(ServiceError, match="expired"):
        sealer.open("session-1", state)
