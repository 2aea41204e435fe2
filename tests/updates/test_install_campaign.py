"""Install campaigns and key-rotation campaigns (issue 18): which cards a campaign targets (all of
the bank's enrolled cards without the package, a list, a CSV with a bad line → nothing created and
the line named), the jobs its waves create, and a rotation of every security domain of a bank."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from rest_framework.test import APIClient

from cards.models import AppletInstance, CardJob, CardPackage, SecurityDomain
from ecard.errors import ServiceError
from tests.factories import World
from updates import rollouts
from updates.demo_cap import build_cap
from updates.ota import complete_job, fail_job
from updates.releases import create_release
from updates.rollout_fleet import parse_card_csv, parse_card_list
from updates.rollout_models import Rollout, RolloutGroup, RolloutTarget

pytestmark = pytest.mark.django_db

PREFIX = World.ALPHA_RID + "01"
PACKAGE = PREFIX + "5042"
INSTANCE = PACKAGE + "01"


@pytest.fixture
def release(world: World):
    return create_release(
        bank=world.alpha,
        cap_bytes=build_cap(PACKAGE, [PACKAGE + "01"], (1, 0)),
        filename="transit.cap",
        actor=world.users["alpha_op"],
    )


def install(world: World, release, **kwargs) -> Rollout:
    kwargs.setdefault("groups", ["100%"])
    kwargs.setdefault("instances", [{"instance_aid": INSTANCE, "privileges": "00", "install_params": "A1"}])
    return rollouts.create_install_rollout(bank=world.alpha, release=release, actor=world.users["alpha_op"], **kwargs)


def targeted(rollout: Rollout) -> set[str]:
    return set(RolloutTarget.objects.filter(rollout=rollout).values_list("card__cin", flat=True))


def run(job: CardJob, outcome: str = "done") -> None:
    with transaction.atomic():
        job = CardJob.objects.select_related("card", "security_domain", "organization").get(pk=job.pk)
        job.attempts += 1
        job.state = CardJob.State.RUNNING
        job.save(update_fields=["attempts", "state"])
        complete_job(job) if outcome == "done" else fail_job(job, "6A84 not enough memory")


def test_all_enrolled_cards_without_the_package_are_targeted(world: World, release) -> None:
    # card1 and card3 carry Alpha's SSD; card3 already has the package: only card1 is targeted
    sd3 = world.sds["alpha@card3"]
    CardPackage.objects.create(security_domain=sd3, package_aid=PACKAGE, package_version="1.0")
    rollout = install(world, release)
    assert rollout.target_kind == Rollout.Target.INSTALL and rollout.total == 1
    assert targeted(rollout) == {world.cards["card1"].cin}
    assert RolloutTarget.objects.get(rollout=rollout).instances == [INSTANCE]


def test_a_locked_sd_an_instance_aid_taken_and_another_banks_cards_are_left_out(world: World, release) -> None:
    SecurityDomain.objects.filter(pk=world.sds["alpha@card3"].pk).update(lifecycle="LOCKED")
    rollout = install(world, release)
    assert targeted(rollout) == {world.cards["card1"].cin}  # card2 is Beta's only, card3 locked
    rollouts.cancel_rollout(rollout=rollout, actor=world.users["alpha_op"])
    SecurityDomain.objects.filter(pk=world.sds["alpha@card3"].pk).update(lifecycle="PERSONALIZED")
    sd1 = world.sds["alpha@card1"]
    AppletInstance.objects.create(
        security_domain=sd1,
        package_aid=PREFIX + "5041",
        package_version="1.0",
        module_aid="AA" * 6,
        instance_aid=INSTANCE,
    )
    assert targeted(install(world, release)) == {world.cards["card3"].cin}


def test_waves_create_update_jobs_that_load_and_install_the_instances(world: World, release) -> None:
    rollout = install(world, release, groups=["50%", "100%"])
    assert rollout.total == 2
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    groups = list(RolloutGroup.objects.filter(rollout=rollout).order_by("index"))
    assert [g.total for g in groups] == [1, 1] and groups[0].state == "running" and groups[1].state == "waiting"
    job = CardJob.objects.get(pk=RolloutTarget.objects.get(rollout=rollout, group=groups[0]).job_id)
    assert job.kind == CardJob.Kind.UPDATE_APPLET and job.organization_id == world.alpha.pk
    assert job.params["packages"] == [
        {
            "release": release.pk,
            "instances": [INSTANCE],
            "install": [
                {"instance_aid": INSTANCE, "module_aid": PACKAGE + "01", "privileges": "00", "install_params": "A1"}
            ],
        }
    ]
    assert job.params["rollout"] == rollout.pk
    run(job)
    groups[1].refresh_from_db()
    assert groups[1].state == "running"  # the first wave met its threshold: the second started
    second = CardJob.objects.get(pk=RolloutTarget.objects.get(rollout=rollout, group=groups[1]).job_id)
    run(second, "failed")
    rollout.refresh_from_db()
    assert rollout.state == "paused" and "error threshold" in rollout.pause_reason
    rollouts.resume_rollout(rollout=rollout, actor=world.users["alpha_op"])
    rollout.refresh_from_db()
    assert rollout.state == "running"


def test_a_list_of_cards_and_its_refusals(world: World, release) -> None:
    card1, card2 = world.cards["card1"], world.cards["card2"]
    rollout = install(world, release, cins=[card1.cin.lower()])
    assert targeted(rollout) == {card1.cin}
    rollouts.cancel_rollout(rollout=rollout, actor=world.users["alpha_op"])
    with pytest.raises(ServiceError) as refused:
        install(world, release, cins=[card1.cin, card2.cin, "00112233"])
    assert refused.value.field == "cins" and card2.cin in refused.value.message and "00112233" in refused.value.message
    assert Rollout.objects.filter(state__in=Rollout.OPEN_STATES).count() == 0


def test_bad_instances_are_refused(world: World, release) -> None:
    for instances, message in (
        ([{"instance_aid": World.BETA_RID + "020101"}], "outside Alpha Bank's AID range"),
        ([{"instance_aid": INSTANCE, "privileges": "9E0000"}], "security domain's or the card issuer's"),
        ([{"instance_aid": INSTANCE}, {"instance_aid": INSTANCE}], "listed twice"),
        ([], "at least one instance"),
    ):
        with pytest.raises(ServiceError) as refused:
            install(world, release, instances=instances)
        assert message in refused.value.message and refused.value.field == "instances"
    assert not Rollout.objects.exists()


def test_card_csv_names_every_bad_line_and_takes_nothing() -> None:
    good = "card_number,name\n0011223344556677,Ann\n\n8899AABB,Bob\n"
    assert parse_card_csv(good) == ["0011223344556677", "8899AABB"]
    bad = "name,card_number\nAnn,0011223344556677\nBob,not-a-card\nCy,0011223344556677\nDi,\n"
    with pytest.raises(ServiceError) as refused:
        parse_card_csv(bad)
    message = refused.value.message
    assert "line 3: 'not-a-card' is not a card number" in message
    assert "line 4: card 0011223344556677 is already on line 2" in message
    assert "line 5" in message and "line 2:" not in message
    with pytest.raises(ServiceError, match="no card_number column"):
        parse_card_csv("cin\n00112233\n")
    with pytest.raises(ServiceError, match="not card numbers"):
        parse_card_list("00112233, xyz")
    assert parse_card_list("00112233\n44556677,00112233") == ["00112233", "44556677"]


def test_portal_install_form_with_a_bad_csv_line_creates_nothing(world: World, release) -> None:
    client = Client()
    client.force_login(world.users["alpha_op"])
    assert client.get("/bank/alpha/rollouts/install/").status_code == 200
    form = {
        "release": release.pk,
        "instances": INSTANCE,
        "privileges": "00",
        "scope": "csv",
        "groups": "100%",
        "success_threshold": 100,
        "error_threshold": 20,
        "retry_count": 1,
    }
    csv_text = f"card_number\n{world.cards['card1'].cin}\nbogus\n"
    response = client.post(
        "/bank/alpha/rollouts/install/", {**form, "csv_file": SimpleUploadedFile("cards.csv", csv_text.encode())}
    )
    assert response.status_code == 400 and "line 3: &#x27;bogus&#x27; is not a card number" in response.content.decode()
    assert not Rollout.objects.exists()
    csv_text = f"card_number\n{world.cards['card3'].cin}\n"
    response = client.post(
        "/bank/alpha/rollouts/install/", {**form, "csv_file": SimpleUploadedFile("cards.csv", csv_text.encode())}
    )
    assert response.status_code == 302
    assert targeted(Rollout.objects.get()) == {world.cards["card3"].cin}
    other = Client()
    other.force_login(world.users["beta_op"])
    assert other.post("/bank/alpha/rollouts/install/", {**form, "scope": "all"}).status_code == 404
    auditor = Client()
    auditor.force_login(world.users["alpha_auditor"])
    assert auditor.post("/bank/alpha/rollouts/install/", {**form, "scope": "all"}).status_code == 403


def test_api_install_campaign_from_csv_text(world: World, release) -> None:
    client = APIClient()
    client.force_authenticate(world.users["alpha_op"])
    body = {
        "target": "install",
        "release": release.pk,
        "instances": [{"instance_aid": INSTANCE}],
        "groups": ["100%"],
        "cards_csv": f"card_number\n{world.cards['card1'].cin}\nzz\n",
    }
    refused = client.post("/api/v1/rollouts/", body, format="json")
    assert refused.status_code == 400 and "line 3" in refused.json()["detail"]
    assert not Rollout.objects.exists()
    body["cards_csv"] = f"card_number\n{world.cards['card1'].cin}\n"
    created = client.post("/api/v1/rollouts/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["target_kind"] == "install" and created.json()["total"] == 1


def test_key_rotation_of_every_security_domain_in_waves(world: World) -> None:
    SecurityDomain.objects.filter(pk=world.sds["alpha@card3"].pk).update(key_kvn=0x3F)
    rollout = rollouts.create_rotation_rollout(bank=world.alpha, actor=world.users["alpha_op"], groups=["100%"])
    assert rollout.target_kind == Rollout.Target.ROTATE and rollout.release is None and rollout.total == 2
    with pytest.raises(ServiceError, match="still ready"):
        rollouts.create_rotation_rollout(bank=world.alpha, actor=world.users["alpha_op"], groups=["100%"])
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    jobs = {j.security_domain_id: j for j in CardJob.objects.filter(kind=CardJob.Kind.ROTATE_KEYS)}
    sd1, sd3 = world.sds["alpha@card1"], world.sds["alpha@card3"]
    assert jobs[sd1.pk].params == {
        "sd_aid": sd1.aid,
        "from_kvn": 0x30,
        "to_kvn": 0x31,
        "rollout": rollout.pk,
        "rollout_target": RolloutTarget.objects.get(rollout=rollout, security_domain=sd1).pk,
    }
    assert jobs[sd3.pk].params["from_kvn"] == 0x3F and jobs[sd3.pk].params["to_kvn"] == 0x31  # wraps to x1
    assert all(j.organization_id == world.alpha.pk for j in jobs.values())
    for job in jobs.values():
        run(job)
    rollout.refresh_from_db()
    assert rollout.state == "completed"
    client = APIClient()
    client.force_authenticate(world.users["alpha_op"])
    created = client.post("/api/v1/rollouts/", {"target": "rotate", "groups": ["100%"]}, format="json")
    assert created.status_code == 201 and created.json()["target_kind"] == "rotate"
    beta = APIClient()
    beta.force_authenticate(world.users["beta_op"])
    assert beta.get(f"/api/v1/rollouts/{rollout.pk}/").status_code == 404
