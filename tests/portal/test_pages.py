"""Portal pages per role: what each role sees, the forms' messages next to the field, and that
another bank's or another citizen's pages do not exist for you."""

from __future__ import annotations

import io

import pytest
from django.test import Client

from cards import services as card_services
from cards.models import Card, CardJob, Enrollment
from issuers.models import Organization
from tests.factories import World
from updates.demo_cap import build_cap
from updates.models import AgentCredential, Release

pytestmark = pytest.mark.django_db

ALPHA_PREFIX = World.ALPHA_RID + "01"


def ok(client: Client, path: str, **kwargs: object) -> str:
    response = client.get(path, **kwargs)
    assert response.status_code == 200, (path, response.status_code)
    return response.content.decode()


def test_every_page_of_each_role_renders(world: World, as_user) -> None:
    cin = world.cards["card1"].cin
    citizen = as_user("citizen1")
    for path in (
        f"/card/{cin}/",
        f"/card/{cin}/add-bank/",
        "/card/connect/",
        f"/card/{cin}/?part=live",
        f"/card/{cin}/report-loss/",
        "/account/e-mail/",
    ):
        ok(citizen, path)
    bank = as_user("alpha_op")
    for path in (
        "/bank/alpha/",
        "/bank/alpha/keys/",
        "/bank/alpha/releases/",
        "/bank/alpha/notices/",
        "/bank/alpha/repairs/",
    ):
        ok(bank, path)
    agency = as_user("agency_op")
    for path in (
        "/agency/",
        "/agency/cards/",
        "/agency/cards/issue/",
        "/agency/cards/batch/",
        "/agency/cards/manufacturer-files/",
        "/agency/banks/",
        "/agency/policy/",
        f"/agency/cards/{cin}/",
        f"/agency/cards/{cin}/repair/",
        f"/agency/cards/{cin}/block/",
        f"/agency/cards/{cin}/replace/",
        "/agency/renewals/",
        "/agency/cards/?q=citizen1",
    ):
        ok(agency, path)
    ok(as_user("regulator"), "/regulator/")
    assert ok(Client(), "/").count("Log in") >= 1


def test_layout_landmarks_and_skip_link(world: World, as_user) -> None:
    page = ok(as_user("alpha_op"), "/bank/alpha/")
    assert '<a class="skip-link" href="#main">' in page
    assert '<main id="main"' in page and '<nav aria-label="Main"' in page and "<header" in page
    assert 'aria-current="page"' in page
    assert '<html lang="en">' in page


def test_pages_of_another_role_are_refused(world: World, as_user) -> None:
    citizen = as_user("citizen1")
    for path in ("/bank/alpha/", "/agency/", "/agency/cards/issue/", "/regulator/"):
        assert citizen.get(path).status_code in (403, 404), path
    bank = as_user("alpha_op")
    for path in ("/agency/", "/card/connect/", "/regulator/"):
        assert bank.get(path).status_code == 403, path
    assert Client().get("/bank/alpha/").status_code == 302  # to the login page


def test_another_banks_pages_do_not_exist(world: World, as_user) -> None:
    beta = as_user("beta_op")
    beta_sd = world.sds["beta@card2"]
    alpha_sd = world.sds["alpha@card1"]
    for path in (
        "/bank/alpha/",
        "/bank/alpha/keys/",
        "/bank/alpha/releases/",
        f"/bank/alpha/keys/rotate/{alpha_sd.pk}/",
        f"/bank/beta/keys/rotate/{alpha_sd.pk}/",
    ):
        assert beta.get(path).status_code == 404, path
    assert beta.post("/bank/alpha/releases/", {}).status_code == 404
    assert beta.get(f"/bank/beta/keys/rotate/{beta_sd.pk}/").status_code == 200
    release = Release.objects.create(
        bank=world.alpha,
        package_aid=ALPHA_PREFIX + "77",
        package_version="1.0",
        cap_file=b"x",
        filename="x.cap",
        lfdb_size=1,
        lfdb_sha256="0" * 64,
        lfdb_sha1="0" * 40,
        cap_sha256="1" * 64,
    )
    assert beta.get(f"/bank/beta/releases/{release.pk}/").status_code == 404
    assert as_user("alpha_op").get(f"/bank/alpha/releases/{release.pk}/").status_code == 200


def test_another_citizens_card_does_not_exist(world: World, as_user) -> None:
    other = world.cards["card2"].cin
    citizen = as_user("citizen1")
    for path in (f"/card/{other}/", f"/card/{other}/add-bank/", f"/card/{other}/add-bank/alpha/"):
        assert citizen.get(path).status_code == 404, path
    enrollment = world.enrollments["beta@card2"]
    assert citizen.get(f"/card/{world.cards['card1'].cin}/remove/{enrollment.pk}/").status_code == 404


def test_citizen_card_page_shows_banks_applets_work_and_history(world: World, as_user) -> None:
    card = world.cards["card3"]
    page = ok(as_user("citizen3"), f"/card/{card.cin}/")
    assert "Alpha Bank" in page and "Beta Bank" in page
    assert world.applets["alpha@card3"].instance_aid in page
    assert "You asked to add Alpha Bank to your card" in page  # history from the audit log, in words
    assert "enrollment.requested" not in page
    assert "Nothing pending" in page


def test_add_bank_with_explicit_consent(world: World, as_user) -> None:
    card = world.cards["card1"]
    client = as_user("citizen1")
    choose = ok(client, f"/card/{card.cin}/add-bank/")
    assert "Beta Bank" in choose and "Alpha Bank" not in choose.split("<main")[1].split("</form>")[0]
    response = client.post(f"/card/{card.cin}/add-bank/", {"bank": world.beta.pk})
    assert response.status_code == 302 and response["Location"] == f"/card/{card.cin}/add-bank/beta/"
    consent = ok(client, f"/card/{card.cin}/add-bank/beta/")
    text = card_services.consent_text_for(card, world.beta)
    assert text in consent
    # Without the box ticked: refused, message next to the field, nothing created.
    refused = client.post(f"/card/{card.cin}/add-bank/beta/", {"consent_text": text})
    assert refused.status_code == 400
    assert 'id="id_accepted_error"' in refused.content.decode()
    assert not Enrollment.objects.filter(card=card, bank=world.beta).exists()
    # A consent text that is not what would be installed is refused by the service.
    changed = client.post(f"/card/{card.cin}/add-bank/beta/", {"consent_text": text + " and more", "accepted": "on"})
    assert changed.status_code == 400 and "does not match" in changed.content.decode()
    done = client.post(f"/card/{card.cin}/add-bank/beta/", {"consent_text": text, "accepted": "on"}, follow=True)
    assert done.status_code == 200
    enrollment = Enrollment.objects.get(card=card, bank=world.beta)
    assert enrollment.consent_text == text
    page = done.content.decode()
    assert "Waiting for your card" in page and "Enroll bank" in page


def test_remove_bank_needs_confirmation(world: World, as_user) -> None:
    card = world.cards["card1"]
    enrollment = world.enrollments["alpha@card1"]
    client = as_user("citizen1")
    path = f"/card/{card.cin}/remove/{enrollment.pk}/"
    assert "Remove Alpha Bank" in ok(client, path)
    assert client.post(path, {}).status_code == 400
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.ACTIVE
    assert client.post(path, {"confirm": "on"}).status_code == 302
    enrollment.refresh_from_db()
    assert enrollment.status == Enrollment.Status.REMOVAL_REQUESTED
    assert CardJob.objects.filter(card=card, kind=CardJob.Kind.REMOVE_BANK).exists()


def test_connect_issues_a_credential_shown_once(world: World, as_user) -> None:
    client = as_user("citizen1")
    page = client.post("/card/connect/", {"name": "kitchen laptop"})
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    html = page.content.decode()
    credential = AgentCredential.objects.get(user=world.users["citizen1"])
    token = html.split('id="token">')[1].split("<")[0]
    assert token.startswith("eca_" + credential.key_id)
    assert "python -m agent --server http://testserver" in html
    again = ok(client, "/card/connect/")
    assert token not in again and credential.key_id in again
    revoked = client.post("/card/connect/", {"action": "revoke", "id": credential.pk})
    assert revoked.status_code == 302
    credential.refresh_from_db()
    assert credential.revoked_at is not None
    other = as_user("citizen2")
    assert other.post("/card/connect/", {"action": "revoke", "id": credential.pk}).status_code == 404


def cap_upload(package_aid: str, applets: list[str], version: tuple[int, int] = (1, 0), name: str = "app.cap"):
    data = build_cap(package_aid, applets, version, name="test.app", code_size=512)
    upload = io.BytesIO(data)
    upload.name = name
    return upload


def test_release_upload_shows_parsed_details(world: World, as_user) -> None:
    client = as_user("alpha_op")
    package = ALPHA_PREFIX + "AA"
    response = client.post(
        "/bank/alpha/releases/", {"cap_file": cap_upload(package, [package + "01"]), "changelog": "first"}, follow=True
    )
    assert response.status_code == 200
    release = Release.objects.get(bank=world.alpha, package_aid=package)
    page = response.content.decode()
    for fact in (package, package + "01", release.lfdb_sha256, str(release.lfdb_size), "1.0"):
        assert fact in page
    assert release.imports and release.imports[0]["aid"] in page


def test_bad_cap_is_refused_next_to_the_field(world: World, as_user) -> None:
    client = as_user("alpha_op")
    garbage = io.BytesIO(b"this is not a CAP file")
    garbage.name = "bad.cap"
    response = client.post("/bank/alpha/releases/", {"cap_file": garbage})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_cap_file_error"' in html and "not a valid CAP file" in html.split('id="id_cap_file_error"')[1]
    outside = client.post("/bank/alpha/releases/", {"cap_file": cap_upload("A00000088802AA", ["A00000088802AA01"])})
    assert outside.status_code == 400 and "outside Alpha Bank" in outside.content.decode()
    assert not Release.objects.exists()


def test_bank_auditor_reads_but_cannot_upload_or_rotate(world: World, as_user) -> None:
    auditor = as_user("alpha_auditor")
    page = ok(auditor, "/bank/alpha/releases/")
    assert 'type="file"' not in page
    assert auditor.post("/bank/alpha/releases/", {}).status_code == 403
    assert auditor.get(f"/bank/alpha/keys/rotate/{world.sds['alpha@card1'].pk}/").status_code == 403


def test_keys_page_shows_metadata_and_rotation_is_confirmed(world: World, as_user) -> None:
    client = as_user("alpha_op")
    page = ok(client, "/bank/alpha/keys/")
    assert "KVN" in page and "Delegated" in page
    sd = world.sds["alpha@card1"]
    path = f"/bank/alpha/keys/rotate/{sd.pk}/"
    assert client.post(path, {}).status_code == 400
    assert not CardJob.objects.filter(kind=CardJob.Kind.ROTATE_KEYS).exists()
    assert client.post(path, {"confirm": "on"}).status_code == 302
    assert CardJob.objects.filter(kind=CardJob.Kind.ROTATE_KEYS, security_domain=sd).count() == 1
    twice = client.post(path, {"confirm": "on"})
    assert twice.status_code == 400 and "already pending" in twice.content.decode()


def test_dashboard_chart_counts_applets_by_version(world: World, as_user) -> None:
    page = ok(as_user("alpha_op"), "/bank/alpha/")
    assert '<svg class="chart" role="img"' in page
    applet = world.applets["alpha@card1"]
    assert f"{applet.package_aid} v1.0: 2" in page  # card1 and card3


def test_agency_issues_one_card(world: World, as_user) -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user("citizen9", password="x")
    client = as_user("agency_op")
    response = client.post("/agency/cards/issue/", {"holder": "citizen9", "scp": "3", "emulated": ""})
    assert response.status_code == 302
    assert Card.objects.filter(holder__username="citizen9").exists()
    bad = client.post("/agency/cards/issue/", {"holder": "nobody", "scp": "3"})
    assert bad.status_code == 400 and 'id="id_holder_error"' in bad.content.decode()
    badcin = client.post("/agency/cards/issue/", {"holder": "", "scp": "3", "cin": "XYZ"})
    assert badcin.status_code == 400 and 'id="id_cin_error"' in badcin.content.decode()


def csv_upload(text: str):
    upload = io.BytesIO(text.encode())
    upload.name = "cards.csv"
    return upload


def test_csv_batch_with_errors_is_refused_whole(world: World, as_user) -> None:
    from django.contrib.auth import get_user_model

    for name in ("new1", "new2"):
        get_user_model().objects.create_user(name, password="x")
    before = Card.objects.count()
    client = as_user("agency_op")
    text = "holder,scp,cin,serial\nnew1,03,,\nghost,03,,\nnew2,07,,\nalpha_op,03,,\nnew1,03,,\ncitizen1,03,,\n"
    response = client.post("/agency/cards/batch/", {"csv_file": csv_upload(text)})
    assert response.status_code == 400
    html = response.content.decode()
    assert "No card was issued" in html
    rows = html.split('id="row-errors"')[1]
    for row, reason in (
        (3, "no user named"),
        (4, "scp must be 03 or 02"),
        (5, "organisation member"),
        (6, "repeats row 2"),
        (7, "already holds a card"),
    ):
        assert f"<td>{row}</td><td>" in rows and reason in rows, (row, reason)
    assert "<td>2</td>" not in rows
    assert Card.objects.count() == before


def test_csv_batch_issues_all_rows(world: World, as_user) -> None:
    from django.contrib.auth import get_user_model

    for name in ("new1", "new2"):
        get_user_model().objects.create_user(name, password="x")
    client = as_user("agency_op")
    response = client.post("/agency/cards/batch/", {"csv_file": csv_upload("holder,scp\nnew1,03\nnew2,02\n")})
    assert response.status_code == 302
    assert Card.objects.get(holder__username="new2").scp == 2
    assert client.post("/agency/cards/batch/", {"csv_file": csv_upload("name\nx\n")}).status_code == 400


def test_agency_admits_a_bank(world: World, as_user) -> None:
    client = as_user("agency_op")
    response = client.post(
        "/agency/banks/",
        {
            "name": "Gamma Bank",
            "slug": "gamma",
            "rid": "A000000777",
            "pix_prefix": "",
            "management": "dm",
            "scp": "3",
            "key_length": "16",
        },
    )
    assert response.status_code == 302
    assert Organization.objects.get(slug="gamma").is_bank
    bad = client.post(
        "/agency/banks/", {"name": "Delta", "rid": "XYZ", "management": "dm", "scp": "3", "key_length": "16"}
    )
    assert bad.status_code == 400 and 'id="id_rid_error"' in bad.content.decode()


def test_agency_card_lookup(world: World, as_user) -> None:
    client = as_user("agency_op")
    card = world.cards["card2"]
    page = ok(client, "/agency/cards/", data={"q": "citizen2"})
    assert card.cin in page and world.cards["card1"].cin not in page
    assert card.cin in ok(client, f"/agency/cards/{card.cin}/")


def test_regulator_page_links_to_the_audit_pages(world: World, as_user) -> None:
    page = ok(as_user("regulator"), "/regulator/")
    for link in ('href="/audit/"', 'href="/audit/checkpoints/"', 'href="/audit/export/"'):
        assert link in page
