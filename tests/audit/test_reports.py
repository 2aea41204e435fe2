"""Issue 20, part 2: entries that say what happened, regulator reports and a card at time T, all
from the transparency log (worlds built through the real services, cards run over the air)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from audit import reports
from audit.models import AuditEntry
from audit.services import record_event
from cards import services as card_services
from cards.models import AppletInstance, CardJob, SecurityDomain
from gp.cap import LoadFile
from issuers import services as issuer_services
from issuers.custody_models import KeySet
from issuers.models import Membership
from tests.factories import make_user
from tests.otakit import build_ota_world, enroll
from tests.shared_data import cap_file

pytestmark = pytest.mark.django_db

CAP = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
INSTANCE = "0102030405060708"


@pytest.fixture(autouse=True)
def _cards_dir(tmp_path, settings):
    settings.ECARD_CARDS_DIR = tmp_path


@pytest.fixture
def world():
    world = build_ota_world(cap_file(CAP))
    release = world.releases["0102030405"]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    regulator_org = issuer_services.create_organization(name="Regulator", slug="regulator", kind="regulator")
    world.regulator = make_user("regulator")
    issuer_services.add_member(organization=regulator_org, user=world.regulator, role=Membership.Role.AUDITOR)
    return world


def entries(action: str, **filters) -> list[AuditEntry]:
    from audit.selectors import catch_up

    catch_up()
    return list(AuditEntry.objects.filter(action=action, index__isnull=False, **filters).order_by("index"))


def lfdb_hash(release) -> str:
    lf = LoadFile.from_bytes(bytes(release.cap_file), name=release.filename)
    return hashlib.sha256(lf.load_file_data_block()).hexdigest()


def platform_domains(world) -> dict[str, tuple[str, str, dict[str, str]]]:
    """The platform's own tables (what the log replay must agree with): AID -> (bank, state, applets)."""
    out = {}
    for sd in SecurityDomain.objects.filter(card=world.card):
        applets = {a.instance_aid: a.package_version for a in AppletInstance.objects.filter(security_domain=sd)}
        out[sd.aid] = (sd.organization.slug, sd.state, applets)
    return out


def replayed_domains(state) -> dict[str, tuple[str, str, dict[str, str]]]:
    return {
        d.aid: (d.organization, d.state, {a.instance_aid: a.version for a in d.applet_list}) for d in state.domain_list
    }


# --------------------------------------------------------------------------- entries


def test_install_entries_name_release_version_load_file_hash_and_domain(world) -> None:
    enrollment = enroll(world)
    assert world.present().ok
    release = world.releases["0102030405"]
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    expected = {
        "release": release.pk,
        "version": release.package_version,
        "load_file_hash": lfdb_hash(release),
        "sd_aid": sd.aid,
    }
    (done,) = entries("job.done", card_cin=world.card.cin, details__kind="enroll_bank")
    (package,) = done.details["packages"]
    assert {k: package[k] for k in expected} == expected
    assert package["instances"] == [INSTANCE]
    assert done.details["key_version"] == sd.key_kvn
    assert (
        done.details["algorithm"]
        == KeySet.objects.get(organization=world.bank, card_cin=world.card.cin, sd_aid=sd.aid, kvn=sd.key_kvn).algorithm
    )
    for action in ("receipt.load", "receipt.install"):
        (receipt,) = entries(action, card_cin=world.card.cin)
        assert {k: receipt.details[k] for k in expected} == expected, action
        assert receipt.receipt


def test_key_events_carry_key_version_and_algorithm(world) -> None:
    enrollment = enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    before = sd.key_kvn
    card_services.request_key_rotation(security_domain=sd, actor=world.operator)
    assert world.present().ok
    sd.refresh_from_db()
    (done,) = entries("job.done", card_cin=world.card.cin, details__kind="rotate_keys")
    assert done.details["key_version"] == sd.key_kvn != before
    assert done.details["previous_key_version"] == before
    stored = entries("custody.key_stored", card_cin=world.card.cin, details__sd_aid=sd.aid)
    assert [e.details["key_version"] for e in stored][-1] == sd.key_kvn
    for e in stored:
        keyset = KeySet.objects.get(pk=e.subject_id)
        assert (e.details["key_version"], e.details["algorithm"]) == (keyset.kvn, keyset.algorithm)
        assert "certificate_serial" not in e.details  # no certificates yet: no invented field
    for e in entries("custody.kek_created"):
        assert e.details["key_version"] == e.details["version"] and e.details["algorithm"] == "aes-256-gcm"


# --------------------------------------------------------------------------- a card at time T


def test_card_at_replays_the_log_before_and_after_enrollment_and_after_removal(world) -> None:
    cin = world.card.cin
    issued_view = platform_domains(world)
    enrollment = enroll(world)
    assert world.present().ok
    enrolled_view = platform_domains(world)
    (requested,) = entries("enrollment.requested", card_cin=cin)
    (done,) = entries("job.done", card_cin=cin, details__kind="enroll_bank")
    card_services.request_removal(enrollment=enrollment, actor=world.citizen)
    assert world.present().ok
    removed_view = platform_domains(world)

    before = reports.card_at(cin, requested.time - dt.timedelta(microseconds=1))
    assert before.issued and before.lifecycle == world.card.lifecycle
    assert replayed_domains(before) == issued_view

    after = reports.card_at(cin, done.time)
    assert replayed_domains(after) == enrolled_view
    alpha = after.domain(enrollment.security_domain.aid)
    assert alpha.organization == world.bank.slug and alpha.state == "active"
    assert alpha.key_version == SecurityDomain.objects.get(pk=enrollment.security_domain_id).key_kvn
    release = world.releases["0102030405"]
    assert [(p.aid, p.version, p.load_file_hash) for p in alpha.package_list] == [
        (release.package_aid, release.package_version, lfdb_hash(release))
    ]
    assert done.index in alpha.entries and requested.index in alpha.entries
    assert {e.index for e in after.entries} >= set(alpha.entries)

    now = reports.card_at(cin, timezone.now())
    assert replayed_domains(now) == removed_view
    assert now.domain(enrollment.security_domain.aid).state == "removed"
    (issued,) = entries("card.issued", card_cin=cin)
    assert reports.card_at(cin, issued.time - dt.timedelta(microseconds=1)).issued is False


def test_card_at_does_not_read_the_card_tables(world) -> None:
    enroll(world)
    assert world.present().ok
    expected = replayed_domains(reports.card_at(world.card.cin, timezone.now()))
    AppletInstance.objects.all().delete()
    SecurityDomain.objects.filter(card=world.card).update(state=SecurityDomain.State.REMOVED)
    assert replayed_domains(reports.card_at(world.card.cin, timezone.now())) == expected


# --------------------------------------------------------------------------- reports


def today_period(bank: str = "") -> reports.Period:
    today = timezone.now().date()
    return reports.Period(today, today, bank)


def rows(report: reports.Report) -> dict[str, int]:
    return {row[0]: row[-1] for row in report.rows}


def locked_update_refused(world, enrollment) -> CardJob:
    """Lock the SSD, then ask for an update: the policy refuses the token, the job fails."""
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    card_services.request_sd_lock(security_domain=sd, lock=True, actor=world.operator)
    assert world.present().ok
    job = CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.bank,
        security_domain=sd,
        params={"applets": [{"release": world.releases["0102030405"].pk, "instance_aid": "0102030405060709"}]},
    )
    world.present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED
    return job


def test_reports_count_what_the_services_did(world) -> None:
    second = make_user("citizen2")
    card_services.issue_card(agency=world.agency, holder=second, emulated=True)
    enrollment = enroll(world)
    assert world.present().ok
    job = locked_update_refused(world, enrollment)

    period = today_period()
    activity = rows(reports.activity_report(period))
    assert activity["Cards issued"] == len(entries("card.issued")) == 2
    assert activity["Enrollments requested"] == 1 and activity["Enrollments completed"] == 1
    assert activity["Removals completed"] == 0

    (update,) = reports.updates_report(period).rows
    release = world.releases["0102030405"]
    assert update[:5] == [release.pk, world.bank.slug, release.package_aid, release.package_version, lfdb_hash(release)]
    assert update[5:] == [1, 0]

    refusals = reports.refusals_report(period)
    denied = entries("token.denied")
    assert refusals.total == len(denied) >= 1
    assert {r[0] for r in refusals.rows} == {e.reason for e in denied}

    failures = reports.failures_report(period)
    assert ["Failed job", "update_applet", job.last_error, 1] in failures.rows
    lifecycle = rows(reports.lifecycle_report(period))
    assert lifecycle["Cards blocked"] == 0 and lifecycle["Cards replaced"] == 0

    # Per bank: Beta has nothing; the agency's issuance is not a bank's.
    beta = today_period(world.other_bank.slug)
    assert rows(reports.activity_report(beta))["Enrollments completed"] == 0
    assert reports.refusals_report(beta).rows == [] and reports.updates_report(beta).rows == []
    assert rows(reports.activity_report(beta))["Cards issued"] == 2
    # Another period: nothing.
    last = reports.Period(*reports.last_month(timezone.now().date()))
    assert rows(reports.activity_report(last))["Enrollments completed"] == 0


def test_card_lifecycle_actions_are_counted_and_replayed(world) -> None:
    with transaction.atomic():
        record_event(action="card.blocked", subject_type="card", subject_id=world.card.cin, card_cin=world.card.cin)
        record_event(action="card.locked", subject_type="card", subject_id=world.card.cin, card_cin=world.card.cin)
    counted = rows(reports.lifecycle_report(today_period()))
    # the decision and the card's proof of it are counted apart: one blocked card counts once as blocked
    assert counted["Cards blocked"] == 1 and counted["Cards locked on the card"] == 1
    assert reports.card_at(world.card.cin, timezone.now()).lifecycle == "CARD_LOCKED"


def test_last_month() -> None:
    assert reports.last_month(dt.date(2026, 3, 15)) == (dt.date(2026, 2, 1), dt.date(2026, 2, 28))
    assert reports.last_month(dt.date(2026, 1, 1)) == (dt.date(2025, 12, 1), dt.date(2025, 12, 31))


def test_csv_cells_cannot_be_formulas() -> None:
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1"):
        assert reports.csv_cell(text) == "'" + text
    assert reports.csv_cell("plain") == "plain" and reports.csv_cell(-3) == -3


# --------------------------------------------------------------------------- pages and access


def client_for(user) -> Client:
    client = Client(raise_request_exception=True)
    client.force_login(user)
    return client


PAGES = ("/regulator/reports/", "/regulator/reports/activity.csv", "/regulator/card/")


def test_only_regulators_and_the_agency_see_reports_and_cards(world) -> None:
    agency_user = make_user("agency_admin")
    issuer_services.add_member(organization=world.agency, user=agency_user, role=Membership.Role.ADMIN)
    for user in (world.regulator, agency_user):
        for path in PAGES:
            assert client_for(user).get(path).status_code == 200, (user, path)
    for user in (world.operator, world.citizen):
        for path in (*PAGES, f"/regulator/card/?cin={world.card.cin}"):
            assert client_for(user).get(path).status_code == 404, (user, path)
    assert Client().get(PAGES[0]).status_code == 302


def test_csv_download_has_a_header_and_no_formula(world) -> None:
    with transaction.atomic():
        record_event(
            action="token.denied",
            subject_type="security_domain",
            subject_id="A0",
            outcome="denied",
            reason='=HYPERLINK("http://evil")',
            organization=world.bank,
            card_cin=world.card.cin,
        )
    today = timezone.now().date().isoformat()
    response = client_for(world.regulator).get(
        "/regulator/reports/refusals.csv", {"date_from": today, "date_to": today, "bank": world.bank.slug}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    table = list(csv.reader(io.StringIO(response.content.decode())))
    assert table[0] == ["Period from", "Period to", "Bank", "Reason", "Refusals"]
    assert table[1] == [today, today, world.bank.slug, '\'=HYPERLINK("http://evil")', "1"]


@pytest.mark.parametrize(
    "query",
    [
        {"date_from": "2026-13-01"},
        {"date_from": "2026-02-10", "date_to": "2026-02-01"},
        {"date_to": "9999-12-31"},
        {"bank": "nobank"},
        {"date_from": "1-01-01", "date_to": "9999-01-01"},
    ],
)
def test_bad_report_parameters_are_400(world, query) -> None:
    client = client_for(world.regulator)
    assert client.get("/regulator/reports/", query).status_code == 400
    assert client.get("/regulator/reports/activity.csv", query).status_code == 400
    assert client.get("/regulator/reports/nosuch.csv").status_code == 404


def test_card_page_shows_the_replay_with_proof_links(world) -> None:
    enroll(world)
    assert world.present().ok
    client = client_for(world.regulator)
    page = client.get("/regulator/card/", {"cin": world.card.cin.lower()})
    assert page.status_code == 200
    body = page.content.decode()
    (done,) = entries("job.done", card_cin=world.card.cin, details__kind="enroll_bank")
    assert f"/audit/entries/{done.index}/" in body and f"/api/v1/audit/entries/{done.index}/proof" in body
    assert INSTANCE in body
    cin = world.card.cin
    for bad in ({"cin": "zz"}, {"cin": cin, "at": "yesterday"}, {"cin": cin, "at": "99999-01-01"}):
        assert client.get("/regulator/card/", bad).status_code == 400, bad
    assert client.get("/regulator/card/", {"cin": "AB" * 8}).status_code == 404


def test_an_update_is_reported_by_release_and_replayed(world) -> None:
    from updates.demo_cap import build_cap
    from updates.releases import create_release

    package, applet, instance = "0102030405AA", "0102030405AA01", "0102030405AA0101"
    v1, v2 = (
        create_release(
            bank=world.bank,
            cap_bytes=build_cap(package, [applet], version, name="alpha.w"),
            filename=f"w-{version[0]}.cap",
            actor=world.operator,
        )
        for version in ((1, 0), (1, 1))
    )
    enrollment = enroll(world)
    assert world.present().ok
    sd = SecurityDomain.objects.get(pk=enrollment.security_domain_id)
    for release in (v1, v2):
        CardJob.objects.create(
            card=world.card,
            kind=CardJob.Kind.UPDATE_APPLET,
            organization=world.bank,
            security_domain=sd,
            params={"packages": [{"release": release.pk, "instances": [instance]}]},
        )
        result = world.present()
        assert result.ok, result
        assert (
            AppletInstance.objects.get(security_domain=sd, instance_aid=instance).package_version
            == release.package_version
        )
        if release == v1:
            first_update = entries("job.done", card_cin=world.card.cin, details__kind="update_applet")[-1]
            view_after_v1 = platform_domains(world)
    view_after_v2 = platform_domains(world)

    updates = {row[0]: row for row in reports.updates_report(today_period()).rows}
    assert updates[v1.pk][3:] == [v1.package_version, lfdb_hash(v1), 0, 1]
    assert updates[v2.pk][3:] == [v2.package_version, lfdb_hash(v2), 0, 1]
    assert reports.card_at(world.card.cin, first_update.time).domain(sd.aid).packages[package].version == "1.0"
    assert replayed_domains(reports.card_at(world.card.cin, first_update.time)) == view_after_v1
    assert replayed_domains(reports.card_at(world.card.cin, timezone.now())) == view_after_v2 != view_after_v1
