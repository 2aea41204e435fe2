"""Bank SSD stages run through the bank's own key service (issue 17): enrollment with no shared
secret (SCP11b, then the bank's SCP03 keys put by its service), applet updates and key rotation
wrapped by the service, the bank's policy refusing what it did not sign off, and a service that is
down holding the job instead of failing it. Real HTTPS with mutual TLS, a real SoftHSM2 token, the
emulated card through the relay API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import LazySettings

from audit.models import AuditEntry
from cards.models import CardJob, SecurityDomain
from gp import commands
from issuers.custody_models import KeySet
from issuers.key_services import client_of
from issuers.models import BankKeyService
from tests.bankservice import RunningService
from tests.otakit import (
    OtaWorld,
    build_ota_world,
    enroll,
    open_scp03,
    register_key_service,
    serving_key_service,
    update_applet_job,
)
from tests.shared_data import cap_file
from updates.ota import BANK_SCP03_KVN

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"


@pytest.fixture
def world(tmp_path: Path, settings: LazySettings) -> OtaWorld:
    settings.ECARD_KEYSERVICE_CLIENT_DIR = str(tmp_path / "platform-identity")
    return build_ota_world(cap_file(EMPTY), bank_scp=0x11)


@pytest.fixture
def alpha_service(world: OtaWorld, tmp_path: Path) -> Iterator[RunningService]:
    with serving_key_service(world, tmp_path / "alpha-service") as service:
        yield service


def journal_of(world: OtaWorld) -> dict:
    return client_of(BankKeyService.objects.get(organization=world.bank)).journal()


def enrolled(world: OtaWorld) -> SecurityDomain:
    enrollment = enroll(world)
    result = world.present()
    assert result.ok, result
    job = CardJob.objects.get(enrollment=enrollment)
    assert job.state == CardJob.State.DONE, job.last_error
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain.pk)
    return sd


def test_enrollment_puts_the_banks_keys_through_its_service_and_the_platform_holds_none(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    sd = enrolled(world)

    assert sd.scp == 0x11
    assert sd.key_kvn == BANK_SCP03_KVN
    assert sd.lifecycle == SecurityDomain.Lifecycle.PERSONALIZED
    keys = alpha_service.derive_static_keys(bytes.fromhex(world.card.cin), bytes.fromhex(sd.aid), BANK_SCP03_KVN)
    open_scp03(world.card_transport(), sd.aid, keys)  # the card holds exactly the keys of the bank's token
    assert not KeySet.objects.filter(organization=world.bank).exists()
    secrets = [k.hex().upper() for k in (keys.enc, keys.mac, keys.dek)]
    for entry in AuditEntry.objects.all():
        text = str(entry.details).upper() + entry.reason.upper()
        assert not any(s in text for s in secrets)
    journal = journal_of(world)
    assert {e["action"] for e in journal["entries"]} >= {"open", "wrap"}
    assert all(s not in str(journal).upper() for s in secrets)


def test_applet_update_is_wrapped_by_the_service_only_for_a_release_the_bank_signed_off(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    sd = enrolled(world)
    release = world.releases[PACKAGE]
    params = {"packages": [{"release": release.pk, "instances": [INSTANCE]}]}

    refused = update_applet_job(world, sd, params)
    world.present()
    refused.refresh_from_db()
    assert refused.state == CardJob.State.FAILED
    # The bank's service signs (DAP) only code the bank approved, so nothing unapproved is ever
    # planned for its SSD; the service journals its refusal to sign (issue 18).
    assert "no DAP signature of Alpha Bank" in refused.last_error
    assert not world.releases[PACKAGE].__class__.objects.get(pk=release.pk).dap_signature
    journal = journal_of(world)
    assert any(e["action"] == "refused" and e.get("lfdb_sha256") == release.lfdb_sha256 for e in journal["entries"])

    alpha_service.approve_release(bytes.fromhex(PACKAGE), bytes.fromhex(release.lfdb_sha256), "alpha-officer")
    job = update_applet_job(world, sd, params)
    result = world.present()
    assert result.ok, result
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    assert sd.packages.filter(package_aid=PACKAGE).exists()
    assert sd.applets.filter(instance_aid=INSTANCE).exists()


def test_key_rotation_runs_at_the_service(world: OtaWorld, alpha_service: RunningService) -> None:
    from cards import services as card_services

    sd = enrolled(world)
    job = card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    result = world.present()
    assert result.ok, result
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    sd.refresh_from_db()
    assert sd.key_kvn == BANK_SCP03_KVN + 1
    open_scp03(
        world.card_transport(),
        sd.aid,
        alpha_service.derive_static_keys(bytes.fromhex(world.card.cin), bytes.fromhex(sd.aid), sd.key_kvn),
    )


def test_a_service_that_is_down_holds_the_job_and_it_completes_when_back(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    alpha_service.stop()
    enrollment = enroll(world)
    world.present()
    job = CardJob.objects.get(enrollment=enrollment)
    assert job.state == CardJob.State.PENDING
    assert "key service is unavailable" in job.last_error
    assert job.attempts == 0  # held, not charged
    assert AuditEntry.objects.filter(action="job.held", subject_id=str(job.pk)).exists()

    world.present()  # still down: still held, never failed
    job.refresh_from_db()
    assert job.state == CardJob.State.PENDING and job.attempts == 0

    alpha_service.start()
    result = world.present()
    assert result.ok, result
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error


def test_a_platform_asking_for_another_banks_sd_or_an_aid_outside_the_range_is_refused_and_both_sides_say_so(
    world: OtaWorld, alpha_service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = enrolled(world)
    # the platform's own DM policy would refuse the token first: this platform has lost it
    monkeypatch.setattr("updates.policy.authorize", lambda **kwargs: None)
    release = world.releases[PACKAGE]
    alpha_service.approve_release(bytes.fromhex(PACKAGE), bytes.fromhex(release.lfdb_sha256), "alpha-officer")

    # an instance AID in Beta's range, inside Alpha's SSD
    outside = "A00000088802AA01"
    job = update_applet_job(world, sd, {"packages": [{"release": release.pk, "instances": [outside]}]})
    world.present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED and "key service refused" in job.last_error
    assert outside in job.last_error

    # a platform that points Beta's SSD at Alpha's service (a wrong or malicious registration)
    register_key_service(world.other_bank, alpha_service)
    enrollment = enroll(world, world.other_bank)
    world.present()
    beta_job = CardJob.objects.get(enrollment=enrollment)
    assert beta_job.state == CardJob.State.FAILED and "key service refused" in beta_job.last_error

    refusals = AuditEntry.objects.filter(action="key_service.refused")
    assert {e.subject_id for e in refusals} >= {sd.aid, enrollment.security_domain.aid}
    journaled = [e for e in journal_of(world)["entries"] if e["action"] == "refused"]
    assert len(journaled) >= 2
    assert any(e["sd_aid"].upper() == enrollment.security_domain.aid for e in journaled)


def test_exchanges_and_key_service_calls_are_batched(
    world: OtaWorld, alpha_service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delegation keeps the engine's round trips (a single-stage job: 3 exchanges) and calls the
    bank's service at most twice per exchange (unwrap the answers, open or wrap the next batch),
    never once per APDU. SCP11b enrollment costs one exchange more than an SCP03 stage: INTERNAL
    AUTHENTICATE's answer must come back before anything can be wrapped."""
    from agent.core import run_session
    from issuers import bank_service_client as bsc
    from tests.otakit import ApiServer

    calls: list[str] = []
    original = bsc.BankServiceClient._request

    def counting(self: bsc.BankServiceClient, method: str, path: str, body: object = None) -> object:
        calls.append(path)
        return original(self, method, path, body)  # type: ignore[arg-type]

    monkeypatch.setattr(bsc.BankServiceClient, "_request", counting)

    class Counting(ApiServer):
        exchanges = 0

        def open_session(self, mode: str) -> dict:
            Counting.exchanges += 1
            return super().open_session(mode)

        def exchange(self, session: str, number: int, responses: list[str]) -> dict:
            Counting.exchanges += 1
            return super().exchange(session, number, responses)

    enroll(world)
    result = run_session(world.card_transport(), Counting(world.token))
    assert result.ok, result
    # install the SSD (ISD, 3 exchanges), then SELECT + GET DATA BF21, INTERNAL AUTHENTICATE, the key
    # information (the service puts keys only after it), and
    # the bank's keys with the verifying listing
    assert Counting.exchanges == 3 + 4
    assert len(calls) <= 2 * 4

    sd = SecurityDomain.objects.get(card=world.card, organization=world.bank)
    from cards import services as card_services

    card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    Counting.exchanges, calls[:] = 0, []
    result = run_session(world.card_transport(), Counting(world.token))
    assert result.ok, result
    assert Counting.exchanges == 3
    assert 0 < len(calls) <= 2 * 2  # the channel's two exchanges; the identification needs none


def test_keys_put_in_the_scp11b_window_by_someone_else_stop_the_enrollment(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    """The SSD is on the card but the bank's service is down; someone who can reach the card (the
    relay, the agency) opens SCP11b and puts a key of its own. The bank's service reads the SD's
    key information before its PUT KEY, sees the foreign key and refuses: the enrollment fails
    (audited on both sides) instead of handing the bank's keys to an SSD someone else also opens."""
    from gp.keys import StaticKeys, encode_put_key_symmetric
    from gp.scp11 import SCP11b, parse_certificates
    from tests.cardsim.scp11_host import SCP11Session, certificate_store

    alpha_service.stop()
    enrollment = enroll(world)
    world.present()  # the ISD installs the SSD; the bank's stage is held
    job = CardJob.objects.get(enrollment=enrollment)
    assert job.state == CardJob.State.PENDING
    sd_aid = enrollment.security_domain.aid

    transport = world.card_transport()
    chain = parse_certificates(certificate_store(transport.transmit, bytes.fromhex(sd_aid)))
    intruder = SCP11b(sd_public_key=chain[-1].public_key_point, kvn=0x01, kid=0x13)
    assert SCP11Session(transport.transmit, bytes.fromhex(sd_aid), intruder).open() == 0x9000
    data = encode_put_key_symmetric(0x3E, StaticKeys.single(bytes(16), 0x3E), intruder.encrypt_key, algorithm="aes")
    put = commands.put_key(0x3E, data[1:], key_id=0x01)
    assert intruder.unwrap_response(transport.transmit(intruder.wrap(put))).sw == 0x9000

    alpha_service.start()
    world.present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED and "key service refused" in job.last_error
    assert AuditEntry.objects.filter(action="key_service.refused", subject_id=sd_aid).exists()
    assert any(e["action"] == "refused" for e in journal_of(world)["entries"])


def test_the_services_journal_matches_the_platforms_audit_log(world: OtaWorld, alpha_service: RunningService) -> None:
    """Each session the bank's service opened or wrapped for is a card session the platform's log
    records (same session id, same card), and each of the platform's sessions with Alpha's SSD is
    in the service's journal: either side can check the other."""
    sd = enrolled(world)
    from cards import services as card_services

    card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    assert world.present().ok
    entries = journal_of(world)["entries"]
    journaled = {(e["session"], e["card"].upper()) for e in entries if e["action"] in ("open", "wrap")}
    assert len({s for s, _c in journaled}) == 2  # the enrollment's session and the rotation's
    logged = {
        (e.subject_id, e.card_cin)
        for e in AuditEntry.objects.filter(action="session.done", subject_type="card_session")
    }
    assert journaled <= logged
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
