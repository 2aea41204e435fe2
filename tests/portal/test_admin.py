"""The Django admin: the portal's login (throttle, second factor) and no write that bypasses a
service and its audit entry."""

from __future__ import annotations

import time

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory

from audit.models import AuditEntry
from cards.models import Card
from issuers.models import Organization, SsdTemplate
from portal import ratelimit, totp
from portal.admin_site import ADMIN_WRITES, AuditedAdminMixin
from portal.models import TotpDevice
from tests.factories import PASSWORD, World
from tests.portal.test_auth import enrol


@pytest.fixture
def root(world: World):
    return get_user_model().objects.create_superuser("root", email="root@example.org", password=PASSWORD)


def admin_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --------------------------------------------------------------------------- login


def test_admin_login_page_is_the_portal_login(world: World) -> None:
    response = Client().get("/admin/login/?next=/admin/issuers/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/admin/issuers/"
    assert Client().get("/admin/")["Location"].startswith("/admin/login/")


def test_brute_force_on_admin_login_is_throttled(root) -> None:
    client = Client()
    statuses = [
        client.post("/admin/login/", {"username": "root", "password": f"guess{n}", "next": "/admin/"}).status_code
        for n in range(ratelimit.MAX_FAILURES)
    ]
    assert statuses == [200] * (ratelimit.MAX_FAILURES - 1) + [429]
    # Even the right password is refused now, and nothing is logged in.
    right = client.post("/admin/login/", {"username": "root", "password": PASSWORD, "next": "/admin/"})
    assert right.status_code == 429
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302
    # The same counter as the portal's login form: that is throttled for root from here too.
    assert client.post("/accounts/login/", {"username": "root", "password": PASSWORD}).status_code == 429


def test_admin_login_without_second_factor_works(root) -> None:
    client = Client()
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_staff_with_second_factor_cannot_reach_admin_with_password_alone(root) -> None:
    device = enrol(admin_client(root))
    client = Client()
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/verify/"
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/issuers/ssdtemplate/").status_code == 302
    # After the code, the admin opens.
    good = client.post("/accounts/login/verify/", {"code": totp.code_at(device, time.time() + totp.STEP)})
    assert good.status_code == 302 and good["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_session_that_skipped_the_second_factor_does_not_open_the_admin(root) -> None:
    enrol(admin_client(root))
    client = admin_client(root)  # a session made without the code (any other login path)
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/login/?next=/admin/")["Location"] == "/accounts/login/?next=/admin/"
    assert "_auth_user_id" not in client.session  # logged out, not left half-authenticated


def test_non_staff_user_is_refused_not_looped(world: World) -> None:
    client = admin_client(world.users["alpha_op"])
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/login/?next=/admin/").status_code == 403


# --------------------------------------------------------------------------- writes


def test_every_registered_admin_is_read_only_unless_routed_through_a_service(root) -> None:
    request = RequestFactory().get("/admin/")
    request.user = root
    registered = {model._meta.label: model_admin for model, model_admin in admin.site._registry.items()}
    assert set(ADMIN_WRITES) <= set(registered)
    for label, model_admin in registered.items():
        can = (
            model_admin.has_add_permission(request),
            model_admin.has_change_permission(request),
            model_admin.has_delete_permission(request),
        )
        if label in ADMIN_WRITES:
            assert isinstance(model_admin, AuditedAdminMixin) or type(model_admin).delete_model is not (
                admin.ModelAdmin.delete_model
            ), label
            continue
        assert can == (False, False, False), f"{label} is writable in the admin: {can}"
        for inline in model_admin.get_inline_instances(request):
            assert not inline.has_add_permission(request, None), label
            assert not inline.has_change_permission(request), label
            assert not inline.has_delete_permission(request), label


def test_superuser_cannot_change_an_ssd_template_in_admin(world: World, root) -> None:
    template = SsdTemplate.objects.get(organization=world.beta)
    before = template.ssd_aid_suffix
    client = admin_client(root)
    url = f"/admin/issuers/ssdtemplate/{template.pk}/change/"
    assert client.get(url).status_code == 200  # shown
    response = client.post(
        url,
        {
            "organization": world.beta.pk,
            "management": template.management,
            "scp": template.scp,
            "scp_i": template.scp_i,
            "key_algorithm": template.key_algorithm,
            "key_length": template.key_length,
            "ssd_aid_suffix": "EE01",
            "default_applets": "[]",
        },
    )
    assert response.status_code == 403
    template.refresh_from_db()
    assert template.ssd_aid_suffix == before
    assert client.post("/admin/issuers/ssdtemplate/add/", {"organization": world.agency.pk}).status_code == 403
    assert client.post(f"/admin/issuers/ssdtemplate/{template.pk}/delete/", {"post": "yes"}).status_code == 403
    assert SsdTemplate.objects.filter(pk=template.pk).exists()


def test_superuser_cannot_change_rows_of_any_app_in_admin(world: World, root) -> None:
    client = admin_client(root)
    bank = world.alpha
    assert (
        client.post(
            f"/admin/issuers/organization/{bank.pk}/change/", {"name": "Evil", "slug": bank.slug, "kind": bank.kind}
        ).status_code
        == 403
    )
    assert client.post(f"/admin/issuers/organization/{bank.pk}/delete/", {"post": "yes"}).status_code == 403
    bank.refresh_from_db()
    assert bank.name == "Alpha Bank"
    card = world.cards["card1"]
    assert client.post(f"/admin/cards/card/{card.pk}/change/", {"lifecycle": "TERMINATED"}).status_code == 403
    assert client.post(f"/admin/cards/card/{card.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Card.objects.get(pk=card.pk).lifecycle == card.lifecycle
    entry = AuditEntry.objects.first()
    assert client.post(f"/admin/audit/auditentry/{entry.pk}/change/", {"action": "x"}).status_code == 403
    assert client.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    # portal: second-factor devices are never edited, only reset (below)
    device = TotpDevice.objects.create(user=world.users["alpha_op"], wrapped_secret=b"x" * 48)
    assert client.post(f"/admin/portal/totpdevice/{device.pk}/change/", {"last_step": 0}).status_code == 403
    assert client.post("/admin/portal/totpdevice/add/", {"user": root.pk}).status_code == 403


def test_admin_writes_that_remain_are_audited(world: World, root) -> None:
    client = admin_client(root)
    user = world.users["citizen1"]
    url = f"/admin/auth/user/{user.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    form = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": "c1@example.org",
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2026-01-01",
        "initial-date_joined_1": "00:00:00",
    }
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(action="admin.user.changed")
    assert entry.subject_id == str(user.pk) and entry.actor_name == "root"
    assert "email" in entry.details["fields"] and "c1@example.org" not in str(entry.details)

    password = client.post(
        f"/admin/auth/user/{user.pk}/password/",
        {
            "password1": "another long passphrase 7",
            "password2": "another long passphrase 7",
            "usable_password": "true",
        },
    )
    assert password.status_code == 302
    assert AuditEntry.objects.filter(action="admin.user.password_changed", subject_id=str(user.pk)).exists()
    assert not AuditEntry.objects.filter(details__icontains="another long passphrase").exists()

    device = TotpDevice.objects.create(user=world.users["alpha_op"], wrapped_secret=b"x" * 48)
    deleted = client.post(f"/admin/portal/totpdevice/{device.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    assert not TotpDevice.objects.filter(pk=device.pk).exists()
    reset = AuditEntry.objects.get(action="second_factor.reset")
    assert reset.subject_id == str(world.users["alpha_op"].pk) and reset.actor_name == "root"


def test_api_tokens_are_not_in_admin(world: World, root) -> None:
    """DRF's token admin shows every key (a credential) and mints tokens for anyone: not registered."""
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=world.users["alpha_op"])
    client = admin_client(root)
    assert client.get("/admin/authtoken/tokenproxy/").status_code == 404
    assert client.post("/admin/authtoken/tokenproxy/add/", {"user": root.pk}).status_code == 404
    assert token.key not in client.get("/admin/").content.decode()
    assert not Token.objects.filter(user=root).exists()


def test_organisation_admin_shows_without_editing(world: World, root) -> None:
    page = admin_client(root).get(f"/admin/issuers/organization/{world.alpha.pk}/change/")
    assert page.status_code == 200 and "Alpha Bank" in page.content.decode()
    assert Organization.objects.get(pk=world.alpha.pk).name == "Alpha Bank"


def test_account_deactivated_between_password_and_code_is_not_logged_in(root) -> None:
    device = enrol(admin_client(root))
    client = Client()
    client.post("/admin/login/", {"username": "root", "password": PASSWORD, "next": "/admin/"})
    root.is_active = False
    root.save()
    response = client.post("/accounts/login/verify/", {"code": totp.code_at(device, time.time() + totp.STEP)})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session
    root.delete()
    assert client.get("/accounts/login/verify/").status_code == 302  # no 500 for a vanished account
