"""Per-card personalisation through the bank's key service (issue 18): the bank's data is sealed
to its own key the moment it arrives, the platform keeps only the envelope, the service opens it
inside the SSD's channel and the emulated card holds exactly the bytes given. Real HTTPS with
mutual TLS, a real SoftHSM2 token, the emulated card through the relay API."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import LazySettings
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards.models import CardJob, Personalization, SecurityDomain
from ecard.errors import ServiceError
from gp import sealed
from issuers.key_services import client_of
from tests.bankservice import RunningService
from tests.otakit import OtaWorld, build_ota_world, enroll, serving_key_service, update_applet_job
from tests.shared_data import cap_file
from updates import personalization

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"
SECRET = bytes.fromhex("C0FFEE00112233445566778899AABBCCDDEEFF") * 20  # 380 bytes: two STORE DATA blocks


@pytest.fixture
def world(tmp_path: Path, settings: LazySettings) -> OtaWorld:
    settings.ECARD_KEYSERVICE_CLIENT_DIR = str(tmp_path / "platform-identity")
    return build_ota_world(cap_file(EMPTY), bank_scp=0x11)


@pytest.fixture
def alpha_service(world: OtaWorld, tmp_path: Path) -> Iterator[RunningService]:
    with serving_key_service(world, tmp_path / "alpha-service") as service:
        yield service


def installed(world: OtaWorld, service: RunningService) -> SecurityDomain:
    enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(card=world.card, organization=world.bank)
    release = world.releases[PACKAGE]
    service.approve_release(bytes.fromhex(PACKAGE), bytes.fromhex(release.lfdb_sha256), "alpha-officer")
    job = update_applet_job(world, sd, {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    assert world.present().ok
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    return sd


def read_back(world: OtaWorld, aid: str) -> bytes | None:
    return world.card_transport().personalization(aid)


def csv_of(world: OtaWorld, data: bytes) -> str:
    return f"card_number,instance_aid,data_hex\n{world.card.serial},{INSTANCE},{data.hex()}\n"


def test_csv_data_reaches_the_applet_and_the_platform_keeps_only_the_sealed_envelope(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    sd = installed(world, alpha_service)
    client = APIClient()
    client.force_authenticate(world.operator)
    upload = client.post(
        "/api/v1/personalization/",
        {"file": _file(csv_of(world, SECRET))},
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    record = Personalization.objects.get(security_domain=sd, instance_aid=INSTANCE)
    assert record.state == Personalization.State.PENDING
    assert SECRET not in bytes(record.envelope) and SECRET.hex() not in bytes(record.envelope).hex()

    result = world.present()
    assert result.ok, result
    record.refresh_from_db()
    assert record.state == Personalization.State.DELIVERED
    assert read_back(world, INSTANCE) == SECRET
    job = CardJob.objects.get(kind=CardJob.Kind.PERSONALIZE)
    assert job.state == CardJob.State.DONE
    # no audit row, job row or journal line carries the data
    for entry in AuditEntry.objects.all():
        assert SECRET.hex().upper() not in (str(entry.details) + entry.reason).upper()
    assert SECRET.hex().upper() not in str(job.params).upper()
    journal = client_of(world.bank.key_service).journal()
    assert SECRET.hex().upper() not in str(journal).upper()


def test_an_envelope_sealed_for_another_card_or_instance_is_refused_by_the_service(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    sd = installed(world, alpha_service)
    point = client_of(world.bank.key_service).personalization_public_key()
    wrong = sealed.seal(point, b"not for this card", cin=bytes.fromhex("00" * 8), aid=bytes.fromhex(INSTANCE))
    personalization.submit_personalization(
        bank=world.bank,
        items=[personalization.PersonalizationItem(1, world.card.serial, INSTANCE, sealed_envelope=wrong)],
        actor=world.operator,
    )
    world.present()
    job = CardJob.objects.get(kind=CardJob.Kind.PERSONALIZE)
    assert job.state in (CardJob.State.FAILED, CardJob.State.PENDING)
    assert "key service" in job.last_error
    assert Personalization.objects.get(security_domain=sd).state == Personalization.State.PENDING
    assert read_back(world, INSTANCE) is None


def test_a_bad_line_names_itself_and_nothing_is_stored(world: OtaWorld, alpha_service: RunningService) -> None:
    installed(world, alpha_service)
    text = csv_of(world, b"\x01\x02") + f"NO-SUCH-CARD,{INSTANCE},0102\n"
    with pytest.raises(ServiceError, match="line 3"):
        personalization.submit_personalization(
            bank=world.bank, items=personalization.items_from_csv(text), actor=world.operator
        )
    assert not Personalization.objects.exists()
    assert not CardJob.objects.filter(kind=CardJob.Kind.PERSONALIZE).exists()


def test_another_bank_cannot_personalise_and_hostile_input_is_a_clear_400(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    installed(world, alpha_service)
    client = APIClient()
    client.force_authenticate(world.operator)
    for body in (
        {"items": [{"card_number": world.card.serial, "instance_aid": "ZZ", "data_hex": "01"}]},
        {"items": [{"card_number": world.card.serial, "instance_aid": INSTANCE}]},
        {"items": [{"card_number": world.card.serial, "instance_aid": INSTANCE, "sealed_b64": "***"}]},
        {"items": [{"card_number": world.card.serial, "instance_aid": "A0000008880201", "data_hex": "01"}]},
        {"items": []},
    ):
        answer = client.post("/api/v1/personalization/", body, format="json")
        assert answer.status_code == 400, (body, answer.content)
    sealed_ok = base64.b64encode(b"ECSD").decode()
    answer = client.post(
        "/api/v1/personalization/",
        {"items": [{"card_number": world.card.serial, "instance_aid": INSTANCE, "sealed_b64": sealed_ok}]},
        format="json",
    )
    assert answer.status_code == 400
    assert not Personalization.objects.exists()


def _file(text: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("perso.csv", text.encode(), content_type="text/csv")


def test_a_card_without_elf_upgrade_gets_its_personalisation_again_after_reinstall(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    from gp.cap import LoadFile
    from tests.cardsim.test_upgrade import variant
    from updates.releases import create_release

    sd = installed(world, alpha_service)
    personalization.submit_personalization(
        bank=world.bank,
        items=[personalization.PersonalizationItem(1, world.card.serial, INSTANCE, data=SECRET)],
        actor=world.operator,
    )
    assert world.present().ok
    assert read_back(world, INSTANCE) == SECRET
    world.card.elf_upgrade = False
    world.card.save(update_fields=["elf_upgrade"])

    lf = variant(LoadFile.from_path(cap_file(EMPTY)), (0, 1))
    new = create_release(bank=world.bank, cap_bytes=lf.load_file_data_block(), filename="v01.ijc", actor=world.operator)
    alpha_service.approve_release(bytes.fromhex(PACKAGE), bytes.fromhex(new.lfdb_sha256), "alpha-officer")
    job = update_applet_job(world, sd, {"packages": [{"release": new.pk, "instances": [INSTANCE]}]})
    assert world.present().ok
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    # The reinstall lost the data on the card; the last delivered envelope went again, unasked.
    again = CardJob.objects.filter(kind=CardJob.Kind.PERSONALIZE).order_by("-pk").first()
    assert again is not None and again.params.get("after_reinstall") == [INSTANCE]
    assert world.present().ok  # queued during the last session: it runs at the next presentation
    again.refresh_from_db()
    assert again.state == CardJob.State.DONE, again.last_error
    assert read_back(world, INSTANCE) == SECRET
    assert Personalization.objects.filter(security_domain=sd, state=Personalization.State.DELIVERED).count() == 2


def test_an_instance_a_repair_restores_gets_its_last_data_again(world: OtaWorld, alpha_service: RunningService) -> None:
    from cardsim import store

    sd = installed(world, alpha_service)
    personalization.submit_personalization(
        bank=world.bank,
        items=[personalization.PersonalizationItem(1, world.card.serial, INSTANCE, data=SECRET)],
        actor=world.operator,
    )
    assert world.present().ok and read_back(world, INSTANCE) == SECRET
    state = store.load(world.card.state_file)  # the instance lost behind the platform's back
    del state["apps"][INSTANCE]
    store.save(world.card.state_file, state)
    release = world.releases[PACKAGE]
    # the bank's job a repair queues for a missing instance (updates.repair)
    job = update_applet_job(
        world, sd, {"packages": [{"release": release.pk, "instances": [INSTANCE]}], "repersonalize": [INSTANCE]}
    )
    assert world.present().ok
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    again = CardJob.objects.filter(kind=CardJob.Kind.PERSONALIZE).order_by("-pk").first()
    assert again is not None and again.pk > job.pk and again.params.get("after_reinstall") == [INSTANCE]
    assert world.present().ok
    again.refresh_from_db()
    assert again.state == CardJob.State.DONE, again.last_error
    assert read_back(world, INSTANCE) == SECRET


def test_the_portal_upload_seals_the_csv_and_never_shows_the_data(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    from django.test import Client

    installed(world, alpha_service)
    browser = Client()
    browser.force_login(world.operator)
    url = f"/bank/{world.bank.slug}/personalization/"
    bad = browser.post(url, {"csv_file": _file(f"card_number,instance_aid,data_hex\nNOPE,{INSTANCE},01\n")})
    assert bad.status_code == 400 and "line 2" in bad.content.decode()
    assert not Personalization.objects.exists()
    ok = browser.post(url, {"csv_file": _file(csv_of(world, SECRET))}, follow=True)
    assert ok.status_code == 200
    page = ok.content.decode()
    record = Personalization.objects.get()
    assert record.envelope_sha256[:10] in page and SECRET.hex() not in page.lower()
    beta = Client()
    beta.force_login(world.citizen)
    assert beta.get(url).status_code in (302, 403, 404)


@pytest.mark.slow
def test_a_card_pulled_at_every_apdu_of_a_personalisation_keeps_old_or_new_data_never_a_mix(
    world: OtaWorld, alpha_service: RunningService
) -> None:
    from tests.otakit import PullableCard, PulledCard

    installed(world, alpha_service)

    def give(data: bytes) -> None:
        personalization.submit_personalization(
            bank=world.bank,
            items=[personalization.PersonalizationItem(1, world.card.serial, INSTANCE, data=data)],
            actor=world.operator,
        )

    give(SECRET)
    clean = world.present()
    assert clean.ok and read_back(world, INSTANCE) == SECRET
    before = SECRET
    for limit in range(clean.apdus):
        for lose_response in (False, True):
            new = bytes([limit, int(lose_response)]) + SECRET[2:]
            give(new)
            with pytest.raises(PulledCard):
                world.present(transport=PullableCard(world.card_transport(), limit, lose_response=lose_response))
            assert read_back(world, INSTANCE) in (before, new), (limit, lose_response)
            result = world.present()
            assert result.ok, (limit, lose_response, result)
            assert read_back(world, INSTANCE) == new, (limit, lose_response)
            assert not Personalization.objects.filter(state=Personalization.State.PENDING).exists()
            before = new
