"""A channel that cannot continue: tampered R-MAC, tampered, alien, expired or rebound state,
a card cryptogram or a certificate chain that does not verify (docs/keyservice.md, 409)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cardsim.transport import InProcessCard
from gp import commands as c
from gp.apdu import SW
from issuers.bank_service_client import (
    BankServiceChannelError,
    BankServiceClient,
    BankServiceUnavailable,
    ClientIdentity,
    IntegrityFailure,
    Unwrapped,
)
from tests.bankservice import BankServiceFactory, RunningService
from tests.keyservice.cards import (
    BANK_KVN,
    BANK_PREFIX,
    SSD_AID,
    Relay,
    card_ca_pem,
    certificate_store,
    cin_of,
    install_scp11_ssd,
    new_card,
)
from tests.keyservice.test_end_to_end import personalise


def test_a_tampered_rmac_is_an_integrity_failure_and_kills_the_state(
    client: BankServiceClient, card: InProcessCard
) -> None:
    relay = Relay(client, card)
    relay.open_scp11b()
    relay.exchange([{"apdu": c.get_status(0x40)}, {"apdu": c.get_data(0x66)}])
    first, second = relay.pending
    relay.pending = [first, second[:-3] + bytes((second[-3] ^ 1,)) + second[-2:]]  # the R-MAC's last byte
    answer = relay.exchange([{"apdu": c.get_status(0x40)}])
    assert isinstance(answer.responses[0], Unwrapped) and answer.responses[0].authenticated
    assert isinstance(answer.responses[1], IntegrityFailure)
    assert answer.commands == [] and answer.state is None
    (entry,) = [e for e in client.journal()["entries"] if e["action"] == "integrity_failure"]
    assert "response 1" in entry["reason"]


def test_a_tampered_alien_or_rebound_state_does_not_open(
    client: BankServiceClient,
    card: InProcessCard,
    bank_service_factory: BankServiceFactory,
    platform_identity: ClientIdentity,
) -> None:
    relay = Relay(client, card)
    relay.open_scp11b()
    assert relay.state is not None
    raw = bytearray(base64.urlsafe_b64decode(relay.state))
    raw[20] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    for session, state in ((relay.session, tampered), ("another-session", relay.state), (relay.session, "not base64!")):
        with pytest.raises(BankServiceChannelError, match="does not open") as error:
            client.exchange(session=session, state=state, responses=relay.pending, commands=[])
        assert error.value.code == "channel" and error.value.whose == "platform"
    # The same bank's second service (another process, another sealing key) cannot open it either.
    other = bank_service_factory("alpha2", aid_prefixes=[BANK_PREFIX], card_ca_pem=card_ca_pem(card))
    with (
        BankServiceClient(other.url, other.certificate_pem, platform_identity) as other_client,
        pytest.raises(BankServiceChannelError, match="does not open"),
    ):
        other_client.exchange(session=relay.session, state=relay.state, responses=relay.pending, commands=[])
    # The genuine state still works.
    assert relay.exchange([]).state is not None


def test_a_card_cryptogram_that_does_not_verify_is_the_cards_fault(
    client: BankServiceClient, card: InProcessCard
) -> None:
    personalise(Relay(client, card))
    assert Relay(client, card).open_scp03() == SW.SUCCESS
    relay = Relay(client, card)
    assert card.transmit(c.select(SSD_AID))[-2:] == b"\x90\x00"
    host_challenge = bytes(8)
    response = bytearray(card.transmit(bytes((0x80, 0x50, BANK_KVN, 0x00, 8)) + host_challenge + b"\x00"))
    response[-3] ^= 1  # the card cryptogram's last byte (Amd D §7.1.1.6)
    with pytest.raises(BankServiceChannelError, match="card cryptogram does not verify") as error:
        client.open_scp03(
            session=relay.session,
            card=cin_of(card),
            sd_aid=SSD_AID,
            kvn=BANK_KVN,
            i=0x70,
            host_challenge=host_challenge,
            initialize_update_response=bytes(response),
        )
    assert error.value.whose == "card"


def test_a_chain_from_another_card_ca_is_refused(
    client: BankServiceClient, alpha: RunningService, tmp_path: Path
) -> None:
    stranger = new_card(tmp_path / "stranger.json", cin="1122334455667788")  # its own issuer CA
    install_scp11_ssd(stranger)
    with pytest.raises(BankServiceChannelError, match="not signed by its issuer") as error:
        client.open_scp11b(
            session="s",
            card=cin_of(stranger),
            sd_aid=SSD_AID,
            kid=0x13,
            kvn=1,
            certificates=certificate_store(stranger, SSD_AID),
        )
    assert error.value.whose == "card"


def test_a_chain_for_another_card_or_sd_is_refused(client: BankServiceClient, card: InProcessCard) -> None:
    chain = certificate_store(card, SSD_AID)
    with pytest.raises(BankServiceChannelError, match="names card"):
        client.open_scp11b(session="s", card=bytes(8), sd_aid=SSD_AID, kid=0x13, kvn=1, certificates=chain)
    with pytest.raises(BankServiceChannelError, match="not this SD"):
        client.open_scp11b(
            session="s", card=cin_of(card), sd_aid=BANK_PREFIX + b"\x99", kid=0x13, kvn=1, certificates=chain
        )


def test_a_stopped_service_is_unavailable_and_after_a_restart_old_states_give_409(
    client: BankServiceClient, card: InProcessCard, alpha: RunningService
) -> None:
    relay = Relay(client, card)
    relay.open_scp11b()
    assert client.health()["status"] == "ok"
    alpha.stop()
    with pytest.raises(BankServiceUnavailable):
        client.health()
    alpha.start()
    assert client.health()["bank"] == "alpha"
    with pytest.raises(BankServiceChannelError, match="does not open"):
        relay.exchange([])
    # Same token: the bank's keys survived the restart.
    personalise(Relay(client, card))
    assert Relay(client, card).open_scp03() == SW.SUCCESS
