"""Delegated Management policy for rollouts: the agency refuses tokens for another bank's SD, a
revoked release, a locked card, a paused or cancelled rollout; the card refuses operations
without a valid token; every refusal is a ``token.denied`` audit entry."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from audit.models import AuditEntry
from cards.models import Card, CardJob, SecurityDomain
from ecard.errors import ServiceError
from gp import commands, dm
from gp.apdu import SW
from gp.cap import LoadFile
from gp.scp import SCP03
from issuers import custody
from tests.updates.test_rollouts_e2e import (
    ALPHA_INSTANCE,
    ALPHA_PKG,
    alpha_cap,
    alpha_version,
    build_fleet,
    card_content,
)
from updates import policy, rollouts
from updates.models import Release, Rollout, RolloutTarget
from updates.ota import BANK_KVN, TOKEN_SCHEME, _token_signer, keyset_for
from updates.releases import create_release, revoke_release

pytestmark = pytest.mark.django_db

SECURITY_STATUS_NOT_SATISFIED = SW.SECURITY_STATUS_NOT_SATISFIED.to_bytes(2, "big")


def install_for_load(release: Release, sd_aid: str) -> bytes:
    lfdb = LoadFile.from_bytes(bytes(release.cap_file)).load_file_data_block()
    return commands.install_for_load(
        bytes.fromhex(release.package_aid), bytes.fromhex(sd_aid), hashlib.sha256(lfdb).digest()
    )


def denials(card: Card) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action="token.denied", card_cin=card.cin, outcome="denied"))


@pytest.fixture
def world():
    fleet = build_fleet(1)
    fleet.v2 = create_release(
        bank=fleet.alpha, cap_bytes=alpha_cap((2, 0), code_size=700), filename="a2.cap", actor=fleet.alpha_op
    )
    holder = fleet.holders[0]
    fleet.card = holder.card
    fleet.alpha_sd = SecurityDomain.objects.get(card=holder.card, organization=fleet.alpha)
    fleet.beta_sd = SecurityDomain.objects.get(card=holder.card, organization=fleet.beta)
    return fleet


def test_policy_allows_the_banks_own_approved_release(world) -> None:
    policy.authorize(
        card=world.card, security_domain=world.alpha_sd, command=install_for_load(world.v2, world.alpha_sd.aid)
    )
    assert denials(world.card) == []


def test_token_refused_for_another_banks_security_domain(world) -> None:
    with pytest.raises(policy.TokenDenied, match="outside Beta Bank's AID range"):
        policy.authorize(
            card=world.card, security_domain=world.beta_sd, command=install_for_load(world.v2, world.beta_sd.aid)
        )
    [entry] = denials(world.card)
    assert entry.subject_id == world.beta_sd.aid and entry.details["operation"] == "install:load"
    # Over the air: an Alpha job aimed at Beta's SD fails before any channel work, audited.
    job = CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.alpha,
        security_domain=world.beta_sd,
        params={"packages": [{"release": world.v2.pk, "instances": [ALPHA_INSTANCE]}]},
    )
    world.holders[0].present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED and "another bank" in job.last_error
    assert len(denials(world.card)) == 2
    assert alpha_version(world.holders[0]) == "1.0"


def test_token_refused_for_a_revoked_release(world) -> None:
    command = install_for_load(world.v2, world.alpha_sd.aid)
    revoke_release(release=world.v2, actor=world.alpha_op, reason="bug in PIN check")
    with pytest.raises(policy.TokenDenied, match="revoked"):
        policy.authorize(card=world.card, security_domain=world.alpha_sd, command=command)
    assert AuditEntry.objects.filter(action="release.revoked", subject_id=str(world.v2.pk)).exists()
    # Over the air: the job fails for good, audited, and the card keeps v1.
    job = CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.alpha,
        security_domain=world.alpha_sd,
        params={"packages": [{"release": world.v2.pk, "instances": [ALPHA_INSTANCE]}]},
    )
    world.holders[0].present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED and "revoked" in job.last_error
    assert len(denials(world.card)) == 2
    assert alpha_version(world.holders[0]) == "1.0"


def test_an_unknown_load_file_hash_gets_no_token(world) -> None:
    command = commands.install_for_load(bytes.fromhex(ALPHA_PKG), bytes.fromhex(world.alpha_sd.aid), bytes(32))
    with pytest.raises(policy.TokenDenied, match="load file hash"):
        policy.authorize(card=world.card, security_domain=world.alpha_sd, command=command)
    assert len(denials(world.card)) == 1


def test_token_refused_for_a_locked_card(world) -> None:
    Card.objects.filter(pk=world.card.pk).update(lifecycle=Card.Lifecycle.CARD_LOCKED)
    world.card.refresh_from_db()
    with pytest.raises(policy.TokenDenied, match="CARD_LOCKED"):
        policy.authorize(
            card=world.card, security_domain=world.alpha_sd, command=install_for_load(world.v2, world.alpha_sd.aid)
        )
    assert len(denials(world.card)) == 1
    # Over the air: an update job for the card fails before any token, audited; the card keeps v1;
    # and a locked card is not a rollout target (planning keeps SECURED cards only).
    job = CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.alpha,
        security_domain=world.alpha_sd,
        params={"packages": [{"release": world.v2.pk, "instances": [ALPHA_INSTANCE]}]},
    )
    world.holders[0].present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED and "CARD_LOCKED" in job.last_error
    assert len(denials(world.card)) == 2
    with pytest.raises(ServiceError, match="do not carry"):
        rollouts.create_rollout(
            bank=world.alpha, release=world.v2, actor=world.alpha_op, groups=["100%"], cins=[world.card.cin]
        )
    Card.objects.filter(pk=world.card.pk).update(lifecycle=Card.Lifecycle.SECURED)
    assert alpha_version(world.holders[0]) == "1.0"


def test_token_refused_while_the_rollout_is_paused_or_cancelled(world) -> None:
    rollout = rollouts.create_rollout(bank=world.alpha, release=world.v2, actor=world.alpha_op, groups=["100%"])
    rollouts.start_rollout(rollout=rollout, actor=world.alpha_op)
    target = RolloutTarget.objects.get(rollout=rollout)
    job = CardJob.objects.get(pk=target.job_id)
    assert job.params["rollout"] == rollout.pk and job.params["packages"][0]["instances"] == [ALPHA_INSTANCE]
    job.attempts = 1  # the engine counts the attempt when the card is identified
    policy.check_job(card=world.card, security_domain=world.alpha_sd, job=job, operation="session:update_applet")
    Rollout.objects.filter(pk=rollout.pk).update(state=Rollout.State.PAUSED)
    with pytest.raises(policy.TokenDenied, match=policy.ROLLOUT_INACTIVE):
        policy.check_job(card=world.card, security_domain=world.alpha_sd, job=job, operation="session:update_applet")
    Rollout.objects.filter(pk=rollout.pk).update(state=Rollout.State.CANCELLED)
    with pytest.raises(policy.TokenDenied, match="is cancelled"):
        policy.check_job(card=world.card, security_domain=world.alpha_sd, job=job, operation="session:update_applet")
    assert len(denials(world.card)) == 2
    # A job an earlier presentation already began may finish (no card left between versions).
    job.attempts = 2
    policy.check_job(card=world.card, security_domain=world.alpha_sd, job=job, operation="session:update_applet")


def test_a_job_refused_because_its_rollout_paused_puts_the_card_back_to_pending(world) -> None:
    """The race: the card was identified (its job running) when the rollout paused."""
    rollout = rollouts.create_rollout(bank=world.alpha, release=world.v2, actor=world.alpha_op, groups=["100%"])
    rollouts.start_rollout(rollout=rollout, actor=world.alpha_op)
    target = RolloutTarget.objects.get(rollout=rollout)
    CardJob.objects.filter(pk=target.job_id).update(state=CardJob.State.RUNNING, attempts=1)
    rollouts.pause_rollout(rollout=rollout, actor=world.alpha_op)
    CardJob.objects.filter(pk=target.job_id).update(state=CardJob.State.PENDING, attempts=0)
    # The engine's identify step makes it running with attempts 1; policy refuses at the stage.
    world.holders[0].present()
    target.refresh_from_db()
    job = CardJob.objects.get(pk=target.job_id)
    assert job.state == CardJob.State.FAILED and policy.ROLLOUT_INACTIVE in job.last_error
    assert target.status == RolloutTarget.Status.PENDING  # not a failure of the card: redone on resume
    assert alpha_version(world.holders[0]) == "1.0"
    rollouts.resume_rollout(rollout=rollout, actor=world.alpha_op)
    assert world.holders[0].present().ok
    target.refresh_from_db()
    assert target.status == RolloutTarget.Status.SUCCEEDED
    assert alpha_version(world.holders[0]) == "2.0"


def _bank_channel(world, transport) -> SCP03:
    sd = world.alpha_sd
    keys = custody.load_static_keys(keyset_for(world.alpha, world.card, sd.aid, BANK_KVN[3]))
    assert transport.transmit(commands.select(bytes.fromhex(sd.aid)))[-2:] == b"\x90\x00"
    channel = SCP03(keys, 0x33, sd_aid=bytes.fromhex(sd.aid))
    response = transport.transmit(channel.initialize_update())
    assert transport.transmit(channel.external_authenticate(response))[-2:] == b"\x90\x00"
    return channel


def test_the_card_refuses_delegated_operations_without_a_valid_token(world) -> None:
    """cardsim enforces Delegated Management: the bank's own keys are not enough."""
    assert world.alpha_sd.management == "dm"
    transport = world.holders[0].transport()
    channel = _bank_channel(world, transport)
    plain = install_for_load(world.v2, world.alpha_sd.aid)
    # No token at all.
    answer = channel.unwrap(transport.transmit(channel.wrap(plain)))
    assert answer[-2:] == SECURITY_STATUS_NOT_SATISFIED, answer.hex()
    # A token signed by someone other than the agency.
    forged = dm.sign_token(ec.generate_private_key(ec.SECP256R1()), dm.token_data_for_command(plain), TOKEN_SCHEME)
    answer = channel.unwrap(transport.transmit(channel.wrap(dm.attach_token(plain, forged))))
    assert answer[-2:] == SECURITY_STATUS_NOT_SATISFIED, answer.hex()
    # DELETE of the bank's own package without a token: refused too; the package stays.
    delete = commands.delete(bytes.fromhex(ALPHA_PKG), related=True)
    answer = channel.unwrap(transport.transmit(channel.wrap(delete)))
    assert answer[-2:] == SECURITY_STATUS_NOT_SATISFIED, answer.hex()
    assert alpha_version(world.holders[0]) == "1.0"
    # Control: with the agency's token the same DELETE is carried out (and a receipt comes back).
    transport = world.holders[0].transport()
    channel = _bank_channel(world, transport)
    token = dm.sign_token(_token_signer(world.card), dm.token_data_for_command(delete), TOKEN_SCHEME)
    answer = channel.unwrap(transport.transmit(channel.wrap(dm.attach_token(delete, token))))
    assert answer[-2:] == b"\x90\x00", answer.hex()
    assert dm.parse_confirmation(answer[:-2]).receipt
    assert ALPHA_PKG not in card_content(world.holders[0])
