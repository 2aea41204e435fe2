"""Login: CSRF, throttling after repeated failures, the optional TOTP second factor, password reset."""

from __future__ import annotations

import re
import time

import pytest
from django.core import mail
from django.test import Client

from portal import ratelimit, totp
from portal.models import TotpDevice
from tests.factories import PASSWORD, World

pytestmark = pytest.mark.django_db


def test_login_page_has_csrf_and_labels(world: World) -> None:
    page = Client().get("/accounts/login/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert '<label for="id_username">' in html and '<label for="id_password">' in html
    enforced = Client(enforce_csrf_checks=True)
    response = enforced.post("/accounts/login/", {"username": "citizen1", "password": PASSWORD})
    assert response.status_code == 403


def test_login_redirects_each_role_to_its_start_page(world: World) -> None:
    for username, start in (
        ("citizen1", f"/card/{world.cards['card1'].cin}/"),
        ("alpha_op", "/bank/alpha/"),
        ("agency_op", "/agency/"),
        ("regulator", "/regulator/"),
    ):
        client = Client()
        response = client.post("/accounts/login/", {"username": username, "password": PASSWORD}, follow=True)
        assert response.status_code == 200
        assert response.redirect_chain[-1][0] == start, username


def test_login_is_throttled_per_username_and_address(world: World) -> None:
    client = Client()
    for _ in range(ratelimit.MAX_FAILURES - 1):
        response = client.post("/accounts/login/", {"username": "citizen1", "password": "wrong"})
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    response = client.post("/accounts/login/", {"username": "citizen1", "password": "wrong"})
    assert response.status_code == 429
    # Now even the right password is refused for a while, with the reason shown.
    response = client.post("/accounts/login/", {"username": "citizen1", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another user (or the same user from another address) is not affected.
    other = client.post("/accounts/login/", {"username": "citizen2", "password": PASSWORD})
    assert other.status_code == 302
    elsewhere = Client(REMOTE_ADDR="10.0.0.9").post("/accounts/login/", {"username": "citizen1", "password": PASSWORD})
    assert elsewhere.status_code == 302


def test_blocked_login_checks_no_password(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client()
    for _ in range(ratelimit.MAX_FAILURES):
        client.post("/accounts/login/", {"username": "citizen1", "password": "wrong"})
    calls: list[object] = []
    monkeypatch.setattr("django.contrib.auth.forms.authenticate", lambda *a, **k: calls.append(k))
    assert client.post("/accounts/login/", {"username": "citizen1", "password": PASSWORD}).status_code == 429
    assert calls == []


def test_one_address_trying_many_usernames_is_throttled(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_FAILURES_PER_IP", 6)
    client = Client()
    statuses = [
        client.post("/accounts/login/", {"username": f"user{n}", "password": "x"}).status_code for n in range(6)
    ]
    assert statuses == [200] * 5 + [429]
    assert client.post("/accounts/login/", {"username": "citizen2", "password": PASSWORD}).status_code == 429


def enrol(client: Client) -> TotpDevice:
    assert client.post("/account/second-factor/", {"action": "start"}).status_code == 302
    page = client.get("/account/second-factor/").content.decode()
    assert "otpauth://totp/" in page
    device = TotpDevice.objects.get()
    assert client.post("/account/second-factor/", {"action": "confirm", "code": "000000"}).status_code == 400
    code = totp.code_at(device, time.time())
    assert client.post("/account/second-factor/", {"action": "confirm", "code": code}).status_code == 302
    device.refresh_from_db()
    assert device.confirmed_at is not None
    return device


def test_second_factor_enrolment_and_login(world: World, as_user, caplog: pytest.LogCaptureFixture) -> None:
    device = enrol(as_user("alpha_op"))
    secret = totp.secret_base32(device)
    assert secret not in repr(device) and secret.encode() not in bytes(device.wrapped_secret)
    client = Client()
    response = client.post("/accounts/login/", {"username": "alpha_op", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/verify/"
    assert "_auth_user_id" not in client.session  # not logged in before the code
    assert client.get("/bank/alpha/").status_code == 302
    bad = client.post("/accounts/login/verify/", {"code": "123456"})
    assert bad.status_code == 400 and "not valid" in bad.content.decode()
    code = totp.code_at(device, time.time() + totp.STEP)  # next step: within the allowed drift, not used yet
    good = client.post("/accounts/login/verify/", {"code": code})
    assert good.status_code == 302
    assert client.get("/bank/alpha/").status_code == 200
    # The same code cannot be used twice.
    again = Client()
    again.post("/accounts/login/", {"username": "alpha_op", "password": PASSWORD})
    assert again.post("/accounts/login/verify/", {"code": code}).status_code == 400
    assert secret not in caplog.text


def test_second_factor_only_for_operators(world: World, as_user) -> None:
    assert as_user("citizen1").get("/account/second-factor/").status_code == 403
    assert as_user("agency_op").get("/account/second-factor/").status_code == 200


def test_verify_step_needs_a_password_first(world: World) -> None:
    response = Client().get("/accounts/login/verify/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"


def test_password_reset_sends_a_working_link(world: World) -> None:
    user = world.users["citizen1"]
    user.email = "citizen1@example.org"
    user.save()
    client = Client()
    assert client.get("/accounts/password_reset/").status_code == 200
    response = client.post("/accounts/password_reset/", {"email": "citizen1@example.org"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert form.status_code == 200 and "Choose a new password" in form.content.decode()
    done = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "a fresh long passphrase 42", "new_password2": "a fresh long passphrase 42"},
    )
    assert done.status_code == 302
    assert Client().login(username="citizen1", password="a fresh long passphrase 42")


def test_second_factor_survives_secret_key_rotation(world: World, as_user, settings) -> None:
    device = enrol(as_user("agency_op"))
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "a new secret key for the rotation test " + "y" * 20
    settings.SECRET_KEY_FALLBACKS = [old]
    assert totp.check_code(device, totp.code_at(device, time.time() + totp.STEP))
    settings.SECRET_KEY_FALLBACKS = []
    # Unopenable: refused (no error page); the admin resets it.
    client = Client()
    client.post("/accounts/login/", {"username": "agency_op", "password": PASSWORD})
    response = client.post("/accounts/login/verify/", {"code": "123456"})
    assert response.status_code == 400


def test_password_reset_requests_are_throttled(world: World) -> None:
    from audit.models import SecurityEvent

    user = world.users["citizen1"]
    user.email = "citizen1@example.org"
    user.save()
    client = Client()
    statuses = [
        client.post("/accounts/password_reset/", {"email": "citizen1@example.org"}).status_code
        for _ in range(ratelimit.MAX_FAILURES + 2)
    ]
    assert statuses == [302] * ratelimit.MAX_FAILURES + [429, 429]
    assert len(mail.outbox) == ratelimit.MAX_FAILURES
    assert SecurityEvent.objects.get(kind="login_throttled").count == 2
