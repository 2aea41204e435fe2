"""The security event log: every kind of refusal leaves a record, without secrets, bounded, and only
the agency and regulators read it."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from audit import security
from audit.models import SecurityEvent
from cards import services as card_services
from portal import ratelimit, totp
from tests.factories import PASSWORD, World

Kind = SecurityEvent.Kind
WRONG_PASSWORD = "hunter2-Wr0ng-Passw0rd"


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def portal(world: World, username: str) -> Client:
    client = Client()
    client.force_login(world.users[username])
    return client


def api(world: World, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[username])
    return client


def only(kind: str) -> SecurityEvent:
    events = list(SecurityEvent.objects.filter(kind=kind))
    assert len(events) == 1, [str(e) for e in SecurityEvent.objects.all()]
    return events[0]


def no_secret_stored(*secrets: str) -> None:
    for event in SecurityEvent.objects.all():
        text = " ".join(str(v) for v in vars(event).values())
        for secret in secrets:
            assert secret not in text, (secret, str(event))


# --------------------------------------------------------------------------- logins


def test_refused_portal_login_is_recorded_without_the_password(world: World) -> None:
    Client().post("/accounts/login/", {"username": "alpha_op", "password": WRONG_PASSWORD})
    event = only(Kind.LOGIN_FAILED)
    assert event.username == "alpha_op" and event.user == world.users["alpha_op"]
    assert event.source == "127.0.0.1" and event.path == "/accounts/login/" and "portal" in event.reason
    no_secret_stored(WRONG_PASSWORD)


def test_unknown_username_is_kept_as_a_prefix_only(world: World) -> None:
    # People type their password into the username field: an unknown name is not stored whole.
    Client().post("/accounts/login/", {"username": WRONG_PASSWORD, "password": "x"})
    event = only(Kind.LOGIN_FAILED)
    assert event.user is None and event.username == f"?{WRONG_PASSWORD[:3]}…({len(WRONG_PASSWORD)})"
    no_secret_stored(WRONG_PASSWORD)


def test_refused_admin_login_is_recorded(world: World) -> None:
    Client().post("/admin/login/", {"username": "agency_admin", "password": WRONG_PASSWORD, "next": "/admin/"})
    event = only(Kind.LOGIN_FAILED)
    assert event.username == "agency_admin" and event.path == "/admin/login/" and "admin" in event.reason


def test_repeated_failures_coalesce_and_throttling_is_recorded(world: World) -> None:
    client = Client()
    for _ in range(ratelimit.MAX_FAILURES + 2):
        client.post("/accounts/login/", {"username": "citizen1", "password": WRONG_PASSWORD})
    failed = only(Kind.LOGIN_FAILED)
    assert failed.count == ratelimit.MAX_FAILURES  # one row, counted
    throttled = only(Kind.LOGIN_THROTTLED)
    assert throttled.count == 2 and throttled.status == 429 and throttled.username == "citizen1"


def test_refused_second_factor_code_is_recorded(world: World) -> None:
    from tests.portal.test_auth import enrol

    device = enrol(portal(world, "alpha_op"))
    client = Client()
    client.post("/accounts/login/", {"username": "alpha_op", "password": PASSWORD})
    bad = "000000" if totp.code_at(device, time.time()) != "000000" else "111111"
    assert client.post("/accounts/login/verify/", {"code": bad}).status_code == 400
    event = only(Kind.SECOND_FACTOR_FAILED)
    assert event.username == "alpha_op"
    no_secret_stored(bad, totp.secret_base32(device))


# --------------------------------------------------------------------------- API


def test_refused_api_token_and_agent_credential_are_recorded_without_them(world: World) -> None:
    token = "0123456789abcdef0123456789abcdef01234567"
    assert APIClient().get("/api/v1/cards/", HTTP_AUTHORIZATION=f"Token {token}").status_code in (401, 403)
    agent = "eca_deadbeef_" + "s" * 40
    assert APIClient().post("/api/v1/relay/sessions/", {}, HTTP_AUTHORIZATION=f"Agent {agent}").status_code == 401
    events = SecurityEvent.objects.filter(kind=Kind.API_AUTH_FAILED).order_by("id")
    assert [e.reason.split(":")[0] for e in events] == ["Token", "Agent"]
    assert [e.path for e in events] == ["/api/v1/cards/", "/api/v1/relay/sessions/"]
    no_secret_stored(token, agent, "s" * 40)


def test_cross_tenant_api_404_and_403_are_recorded(world: World) -> None:
    card1 = world.cards["card1"]
    assert api(world, "beta_op").get(f"/api/v1/cards/{card1.pk}/").status_code == 404
    event = only(Kind.NOT_FOUND)
    assert event.username == "beta_op" and event.path == f"/api/v1/cards/{card1.pk}/" and event.status == 404
    forbidden = api(world, "alpha_auditor").patch(f"/api/v1/organizations/{world.alpha.pk}/", {"is_active": False})
    assert forbidden.status_code == 403
    event = only(Kind.FORBIDDEN)
    assert event.username == "alpha_auditor" and event.status == 403


def test_api_list_and_unknown_urls_are_not_object_routes(world: World) -> None:
    api(world, "beta_op").get("/api/v1/cards/")
    api(world, "beta_op").get("/api/v1/no-such-thing/")
    assert not SecurityEvent.objects.exists()


# --------------------------------------------------------------------------- portal


def test_cross_tenant_portal_404_and_role_403_are_recorded(world: World) -> None:
    assert portal(world, "beta_op").get("/bank/alpha/").status_code == 404
    event = only(Kind.NOT_FOUND)
    assert event.username == "beta_op" and event.path == "/bank/alpha/"
    assert portal(world, "citizen2").get(f"/card/{world.cards['card1'].cin}/").status_code == 404
    assert SecurityEvent.objects.filter(kind=Kind.NOT_FOUND, username="citizen2").count() == 1
    assert portal(world, "citizen1").get("/agency/").status_code == 403
    event = only(Kind.FORBIDDEN)
    assert event.username == "citizen1" and event.path == "/agency/"


# --------------------------------------------------------------------------- consent and uploads


def test_refused_consent_is_recorded_portal_and_api(world: World) -> None:
    from cards.models import Card

    citizen = world.users["citizen1"]
    card = world.cards["card1"]
    text = card_services.consent_text_for(card, world.beta)
    # portal: the box not ticked
    response = portal(world, "citizen1").post(f"/card/{card.cin}/add-bank/beta/", {"consent_text": text})
    assert response.status_code == 400
    event = only(Kind.CONSENT_REFUSED)
    assert event.username == "citizen1" and event.organization_slug == "beta" and "accepted" in event.reason
    # API: accepted false, refused by the service (its transaction rolled back, the record kept)
    refused = api(world, "citizen1").post(
        "/api/v1/enrollments/",
        {"card": card.cin, "bank": "beta", "consent_text": text, "accepted": False},
        format="json",
    )
    assert refused.status_code == 400
    assert SecurityEvent.objects.filter(kind=Kind.CONSENT_REFUSED, reason__startswith="no_consent").count() == 1
    # someone else's card, straight through the service
    with pytest.raises(card_services.ServiceError):
        card_services.request_enrollment(
            card=Card.objects.get(pk=world.cards["card2"].pk),
            bank=world.alpha,
            citizen=citizen,
            consent_text=text,
            accepted=True,
        )
    assert SecurityEvent.objects.filter(kind=Kind.CONSENT_REFUSED, reason__startswith="not_holder").exists()
    assert not SecurityEvent.objects.filter(kind__in=[Kind.FORBIDDEN, Kind.NOT_FOUND]).exists()  # one record each


def test_rejected_upload_is_recorded(world: World) -> None:
    bad = SimpleUploadedFile("evil.cap", b"PK\x03\x04 not a cap at all", content_type="application/octet-stream")
    response = portal(world, "alpha_op").post("/bank/alpha/releases/", {"cap_file": bad, "changelog": ""})
    assert response.status_code == 400
    event = only(Kind.UPLOAD_REJECTED)
    assert event.username == "alpha_op" and event.organization_slug == "alpha"
    assert event.reason.startswith("invalid: not a valid CAP file") and event.path == "/bank/alpha/releases/"
    # The form refuses an empty upload before the service: recorded too.
    portal(world, "alpha_op").post("/bank/alpha/releases/", {"changelog": ""})
    assert SecurityEvent.objects.filter(kind=Kind.UPLOAD_REJECTED, reason="form: cap_file").count() == 1


# --------------------------------------------------------------------------- readers


def test_only_agency_and_regulators_read_the_security_log(world: World) -> None:
    Client().post("/accounts/login/", {"username": "alpha_op", "password": WRONG_PASSWORD})
    event = SecurityEvent.objects.get()
    for username in ("regulator", "agency_op"):
        listing = api(world, username).get("/api/v1/security/events/")
        assert listing.status_code == 200, listing.content
        assert [e["kind"] for e in listing.json()["results"]] == ["login_failed"]
        assert api(world, username).get(f"/api/v1/security/events/{event.pk}/").status_code == 200
        assert portal(world, username).get("/audit/security/").status_code == 200
    for username in ("alpha_admin", "alpha_op", "citizen1", "outsider"):
        assert api(world, username).get("/api/v1/security/events/").status_code == 404
        assert api(world, username).get(f"/api/v1/security/events/{event.pk}/").status_code == 404
        response = portal(world, username).get("/audit/security/")
        assert response.status_code == 404 and "Login refused" not in response.content.decode()
    assert APIClient().get("/api/v1/security/events/").status_code in (401, 403)
    # The attempts are themselves on record.
    assert SecurityEvent.objects.filter(kind=Kind.NOT_FOUND, username="citizen1").count() == 3


def test_filters_and_page(world: World) -> None:
    Client().post("/accounts/login/", {"username": "alpha_op", "password": WRONG_PASSWORD})
    portal(world, "citizen1").get("/agency/")
    client = api(world, "regulator")
    assert [e["kind"] for e in client.get("/api/v1/security/events/?kind=forbidden").json()["results"]] == ["forbidden"]
    assert client.get("/api/v1/security/events/?username=ALPHA_OP").json()["count"] == 1
    assert client.get("/api/v1/security/events/?since=not-a-date").status_code == 400
    page = portal(world, "regulator").get("/audit/security/?kind=login_failed").content.decode()
    assert "alpha_op" in page and WRONG_PASSWORD not in page


# --------------------------------------------------------------------------- bounds


def test_a_source_cannot_flood_the_table(world: World, settings) -> None:
    settings.ECARD_SECURITY_EVENT_ROWS_PER_SOURCE = 5
    settings.ECARD_SECURITY_EVENT_WRITES_PER_SOURCE = 40
    client = portal(world, "beta_op")
    for n in range(100):
        client.get(f"/bank/no-such-bank-{n}/")
    rows = SecurityEvent.objects.filter(source="127.0.0.1")
    assert rows.filter(kind=Kind.NOT_FOUND).count() == 5
    flood = rows.get(kind=Kind.FLOOD)
    assert rows.count() == 6
    assert flood.count >= 32  # 35 counted one by one, then at powers of two (64)


def test_retention_purges_old_events(world: World) -> None:
    Client().post("/accounts/login/", {"username": "alpha_op", "password": WRONG_PASSWORD})
    assert security.purge() == 0
    assert security.purge(now=timezone.now() + timedelta(days=91)) == 1
    assert not SecurityEvent.objects.exists()


def test_recording_never_breaks_the_request(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(security, "_record", broken)
    assert portal(world, "beta_op").get("/bank/alpha/").status_code == 404
    assert api(world, "beta_op").get(f"/api/v1/cards/{world.cards['card1'].pk}/").status_code == 404
