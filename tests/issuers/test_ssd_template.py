"""A bank edits its SSD template (issue 18): the SCP of new security domains and the default
applets a new enrollment gets, through the API and the portal. Strict validation with clear 400s,
an audit entry with the template before and after, and cards already enrolled untouched."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards import services as card_services
from cards.models import CardJob, SecurityDomain
from issuers.models import Organization, SsdTemplate
from tests.factories import World, make_user
from updates.demo_cap import build_cap
from updates.releases import create_release, revoke_release

pytestmark = pytest.mark.django_db

ALPHA_PREFIX = World.ALPHA_RID + "01"
URL = "/api/v1/organizations/alpha/ssd-template/"


def release_of(world: World, bank_slug: str = "alpha", package_suffix: str = "5042", version=(1, 0)):
    bank = getattr(world, bank_slug)
    prefix = World.ALPHA_RID + "01" if bank_slug == "alpha" else World.BETA_RID + "02"
    package = prefix + package_suffix
    return create_release(
        bank=bank,
        cap_bytes=build_cap(package, [package + "01"], version),
        filename="transit.cap",
        actor=world.users[f"{bank_slug}_op"],
    )


def api(world: World, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[username])
    return client


def entry(release, **overrides):
    return {
        "release_id": release.pk,
        "instance_aid": ALPHA_PREFIX + "504201",
        "install_params": "0102",
        "privileges": "00",
        **overrides,
    }


def test_a_bank_operator_sets_default_applets_and_the_scp_audited(world: World) -> None:
    release = release_of(world)
    response = api(world, "alpha_op").put(
        URL, {"scp": 2, "default_applets": [entry(release, name="Transit")]}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["scp"] == 2 and body["key_algorithm"] == "3des" and body["key_length"] == 16
    assert body["default_applets"][0]["release_id"] == release.pk
    template = SsdTemplate.objects.get(organization=world.alpha)
    # stored in the shape the enrollment engine reads (updates.ota.SsdInstallApplets)
    assert template.default_applets == [
        {
            "release": release.pk,
            "instance_aid": ALPHA_PREFIX + "504201",
            "module_aid": release.applet_aids[0],
            "privileges": "00",
            "install_params": "0102",
            "package_aid": release.package_aid,
            "name": "Transit",
        }
    ]
    audit = AuditEntry.objects.filter(action="ssd_template.updated").get()
    assert audit.actor_name == "alpha_op" and audit.organization_slug == "alpha"
    assert audit.details["before"]["scp"] == 3 and audit.details["before"]["default_applets"] == []
    assert audit.details["after"]["scp"] == 2
    assert audit.details["after"]["default_applets"][0]["release"] == release.pk
    assert api(world, "alpha_auditor").get(URL).json()["default_applets"][0]["instance_aid"] == ALPHA_PREFIX + "504201"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda w, r, b: entry(b), "has no release"),
        (lambda w, r, b: entry(r, instance_aid=World.BETA_RID + "020101"), "outside Alpha Bank's AID range"),
        (lambda w, r, b: entry(r, instance_aid="A000"), "instance_aid must be 5 to 16 bytes"),
        (lambda w, r, b: entry(r, instance_aid="zz" * 6), "hexadecimal"),
        (lambda w, r, b: entry(r, privileges="80"), "security domain's or the card issuer's"),
        (lambda w, r, b: entry(r, privileges="0000"), "1 or 3 bytes"),
        (lambda w, r, b: entry(r, install_params="00" * 65), "install_params must be 0 to 64 bytes"),
        (lambda w, r, b: entry(r, release_id=10**9), "has no release"),
    ],
)
def test_bad_default_applets_are_400_with_the_reason_and_change_nothing(world: World, make, message) -> None:
    release, beta_release = release_of(world), release_of(world, "beta")
    before = SsdTemplate.objects.get(organization=world.alpha).default_applets
    response = api(world, "alpha_op").put(URL, {"default_applets": [make(world, release, beta_release)]}, format="json")
    assert response.status_code == 400, response.content
    assert message in response.content.decode()
    assert SsdTemplate.objects.get(organization=world.alpha).default_applets == before
    assert not AuditEntry.objects.filter(action="ssd_template.updated").exists()


def test_a_revoked_release_a_repeated_package_and_a_bad_scp_are_refused(world: World) -> None:
    release = release_of(world)
    client = api(world, "alpha_op")
    twice = client.put(
        URL,
        {"default_applets": [entry(release), entry(release, instance_aid=ALPHA_PREFIX + "504202")]},
        format="json",
    )
    assert twice.status_code == 400 and "already listed" in twice.content.decode()
    assert client.put(URL, {"scp": 1}, format="json").status_code == 400
    scp11 = client.put(URL, {"scp": 0x11}, format="json")
    assert scp11.status_code == 400 and "key service" in scp11.content.decode()
    revoke_release(release=release, actor=world.users["alpha_op"], reason="bug")
    revoked = client.put(URL, {"default_applets": [entry(release)]}, format="json")
    assert revoked.status_code == 400 and "revoked, not approved" in revoked.content.decode()


def test_only_the_banks_operators_edit_it(world: World) -> None:
    release = release_of(world)
    body = {"default_applets": [entry(release)]}
    assert api(world, "beta_op").put(URL, body, format="json").status_code == 404
    assert api(world, "beta_op").get(URL).status_code == 404
    assert api(world, "citizen1").get(URL).status_code == 404
    assert api(world, "alpha_auditor").put(URL, body, format="json").status_code == 403
    assert SsdTemplate.objects.get(organization=world.alpha).default_applets == []


def test_enrolled_cards_keep_what_they_have_and_new_enrollments_get_the_template(world: World) -> None:
    # card2 (Beta only) asks for Alpha before the change: its pending job keeps the old template
    card2, citizen2 = world.cards["card2"], world.users["citizen2"]
    pending = card_services.request_enrollment(
        card=card2,
        bank=world.alpha,
        citizen=citizen2,
        consent_text=card_services.consent_text_for(card2, world.alpha),
        accepted=True,
    )
    enrolled_sd = world.sds["alpha@card1"]
    applets_before = list(enrolled_sd.applets.values_list("instance_aid", "package_version"))
    release = release_of(world)
    api(world, "alpha_op").put(URL, {"scp": 2, "default_applets": [entry(release)]}, format="json")
    job = pending.jobs.get(kind=CardJob.Kind.ENROLL_BANK)
    assert job.params["default_applets"] == []
    enrolled_sd.refresh_from_db()
    assert enrolled_sd.scp == 3
    assert list(enrolled_sd.applets.values_list("instance_aid", "package_version")) == applets_before
    assert not CardJob.objects.filter(security_domain=enrolled_sd, state="pending").exists()
    # a new enrollment reads the template when the citizen consents
    holder = make_user("citizen9")
    new_card = card_services.issue_card(agency=world.agency, holder=holder)
    alpha = Organization.objects.get(pk=world.alpha.pk)
    consent = card_services.consent_text_for(new_card, alpha)
    assert release.package_aid in consent
    fresh = card_services.request_enrollment(
        card=new_card, bank=alpha, citizen=holder, consent_text=consent, accepted=True
    )
    fresh_job = fresh.jobs.get(kind=CardJob.Kind.ENROLL_BANK)
    assert fresh_job.params["default_applets"][0]["release"] == release.pk
    assert SecurityDomain.objects.get(pk=fresh.security_domain_id).scp == 2


def test_the_portal_page_saves_the_template_and_shows_refusals(world: World) -> None:
    release = release_of(world)
    client = Client()
    client.force_login(world.users["alpha_op"])
    page = client.get("/bank/alpha/template/")
    assert page.status_code == 200 and "Default applet 1" in page.content.decode()
    form = {
        "scp": "3",
        "applet-TOTAL_FORMS": "2",
        "applet-INITIAL_FORMS": "0",
        "applet-0-release": str(release.pk),
        "applet-0-instance_aid": ALPHA_PREFIX + "504201",
        "applet-0-privileges": "00",
        "applet-0-install_params": "",
        "applet-0-name": "Transit",
        "applet-1-release": "",
    }
    bad = client.post("/bank/alpha/template/", {**form, "applet-0-instance_aid": "A000000001FF"})
    assert bad.status_code == 400 and "outside Alpha Bank&#x27;s AID range" in bad.content.decode()
    assert SsdTemplate.objects.get(organization=world.alpha).default_applets == []
    saved = client.post("/bank/alpha/template/", form)
    assert saved.status_code == 302
    assert SsdTemplate.objects.get(organization=world.alpha).default_applets[0]["name"] == "Transit"
    other = Client()
    other.force_login(world.users["beta_op"])
    assert other.get("/bank/alpha/template/").status_code == 404
    auditor = Client()
    auditor.force_login(world.users["alpha_auditor"])
    assert auditor.post("/bank/alpha/template/", form).status_code == 403
    assert Client().post("/bank/alpha/template/", form).status_code == 302  # to the login page
