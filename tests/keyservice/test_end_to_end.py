"""The bank's SSD, from its SCP11b birth to SCP03 with the bank's keys, through the real HTTPS
service and the platform's client (docs/keyservice.md)."""

from __future__ import annotations

import pytest

from cardsim.transport import InProcessCard
from gp import commands as c
from gp.apdu import SW
from gp.commands import SecurityDomainLifeCycle
from issuers.bank_service_client import BankServiceClient, BankServiceRefused, Unwrapped
from tests.bankservice import RunningService
from tests.keyservice.cards import BANK_KVN, SSD_AID, Relay


def personalise(relay: Relay) -> list[Unwrapped]:
    """SCP11b, the SD's key information (no key but its own SCP11 key), PUT KEY of the bank's
    keys, SET STATUS of the SSD itself to PERSONALIZED."""
    relay.open_scp11b()
    relay.exchange([{"apdu": c.get_data(0xE0)}])
    relay.exchange([{"put_key": {"kvn": BANK_KVN, "replace": 0}}, {"apdu": c.set_status(0x40, 0x0F, SSD_AID)}])
    answers = relay.exchange([]).responses
    assert all(isinstance(a, Unwrapped) for a in answers)
    return [a for a in answers if isinstance(a, Unwrapped)]


def test_scp11b_puts_the_bank_keys_personalises_then_scp03_opens(
    client: BankServiceClient, card: InProcessCard, alpha: RunningService
) -> None:
    relay = Relay(client, card)
    put_key, set_status = personalise(relay)
    assert put_key.sw == SW.SUCCESS and put_key.authenticated
    assert put_key.data[0] == BANK_KVN and len(put_key.data) == 1 + 3 * 3  # KVN, three KCVs
    assert set_status.sw == SW.SUCCESS and set_status.authenticated
    record = card.state["sds"][SSD_AID.hex().upper()]
    assert f"{BANK_KVN:02X}" in record["keys"]
    assert card.state["apps"][SSD_AID.hex().upper()]["lifecycle"] == SecurityDomainLifeCycle.PERSONALIZED

    again = Relay(client, card)
    assert again.open_scp03() == SW.SUCCESS
    (status,) = again.run([{"apdu": c.get_status(0x40)}])
    assert isinstance(status, Unwrapped)
    assert status.sw == SW.SUCCESS and status.authenticated and status.data
    # The keys the service put are the bank's, derived in the bank's token for this card and SD.
    keys = alpha.derive_static_keys(relay.cin, SSD_AID, BANK_KVN)
    assert record["keys"][f"{BANK_KVN:02X}"]
    assert keys.version == BANK_KVN


def test_put_key_under_scp11b_waits_for_the_sds_key_information_and_refuses_other_keys(
    client: BankServiceClient, card: InProcessCard
) -> None:
    relay = Relay(client, card)
    relay.open_scp11b()
    put_key: dict[str, object] = {"put_key": {"kvn": BANK_KVN, "replace": 0}}
    with pytest.raises(BankServiceRefused, match="GET DATA E0"):
        relay.exchange([{"apdu": c.get_data(0xE0)}, put_key])  # the answer is not in yet
    relay.exchange([{"apdu": c.get_data(0xE0)}])
    answer = relay.exchange([put_key])  # only KID 13 in the SD: the bank's keys go in
    assert len(answer.commands) == 1 and isinstance(answer.responses[0], Unwrapped)

    # The keys are on the card now: a second SCP11b enrolment finds them and puts nothing.
    assert f"{BANK_KVN:02X}" in card.state["sds"][SSD_AID.hex().upper()]["keys"]
    second = Relay(client, card)
    second.open_scp11b()
    second.exchange([{"apdu": c.get_data(0xE0)}])
    with pytest.raises(BankServiceRefused, match=r"already holds other keys \(KID/KVN 01/30,02/30,03/30\)"):
        second.exchange([put_key])


def test_a_release_signed_off_on_the_command_line_applies_to_the_running_service(
    alpha: RunningService, client: BankServiceClient
) -> None:
    """The bank's officer runs ``approve-release`` while the service serves: the sign-off holds
    from the service's next request, no restart."""
    import subprocess
    import sys

    package, digest = bytes.fromhex("F0414C504801"), bytes(range(32))
    assert not alpha.server.service.policy.approved_release(package, digest)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keyservice",
            "approve-release",
            str(alpha.directory),
            "--package-aid",
            package.hex(),
            "--hash",
            digest.hex(),
            "--by",
            "officer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not alpha.server.service.policy.approved_release(package, digest)  # not read yet
    client.health()
    assert alpha.server.service.policy.approved_release(package, digest)
