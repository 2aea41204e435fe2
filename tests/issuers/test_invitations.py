"""Finding 5: a bank admin could add any existing user to its bank (POST /api/v1/members/),
including another bank's admin or the regulator, whose account then gained write rights there.

Now adding a member is an invitation the user accepts; a pending invitation grants nothing;
card holders, agency and regulator accounts are never invited; a member of another bank is
invited only after an agency operator allowed it. Every state change is in the audit log."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards import services as card_services
from ecard.errors import ServiceError
from issuers import services
from issuers.models import Invitation, Membership
from issuers.roles import principal
from tests.factories import World, make_user

pytestmark = pytest.mark.django_db


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def fresh(user):
    """The user as the next request sees them (no cached principal)."""
    return type(user).objects.get(pk=user.pk)


def assert_problem(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("/" + code.replace("_", "-")), response.json()


def invite(world: World, admin: str, org: str, username: str, role: str = "operator", path: str = "/api/v1/members/"):
    return api(world.users[admin]).post(path, {"organization": org, "username": username, "role": role}, format="json")


# --------------------------------------------------------------------------- the attack


def test_a_bank_admin_adding_another_banks_admin_grants_nothing(world: World) -> None:
    response = invite(world, "alpha_admin", "alpha", "beta_admin", role="admin")
    assert_problem(response, 400, "needs_agency_approval")
    assert "agency operator" in response.json()["detail"]
    beta_admin = fresh(world.users["beta_admin"])
    assert world.alpha.pk not in principal(beta_admin).roles
    assert not Membership.objects.filter(user=beta_admin, organization=world.alpha).exists()
    assert not Invitation.objects.exists()
    sds = api(beta_admin).get("/api/v1/security-domains/", {"organization__slug": "alpha"}).json()
    assert sds["count"] == 0
    alpha_sd = world.sds["alpha@card1"]
    assert api(beta_admin).post(f"/api/v1/security-domains/{alpha_sd.pk}/rotate-keys/").status_code == 404


def test_a_bank_admin_adding_the_regulator_grants_nothing(world: World) -> None:
    response = invite(world, "alpha_admin", "alpha", "regulator", role="operator")
    assert_problem(response, 400, "not_invitable")  # without saying the account is the regulator's
    regulator = fresh(world.users["regulator"])
    assert principal(regulator).roles == {world.regulator_org.pk: Membership.Role.AUDITOR}
    alpha_sd = world.sds["alpha@card1"]
    assert api(regulator).post(f"/api/v1/security-domains/{alpha_sd.pk}/rotate-keys/").status_code == 403
    # The direct service path (seed commands) applies the same rules.
    with pytest.raises(ServiceError) as refused:
        services.add_member(organization=world.alpha, user=regulator, role=Membership.Role.OPERATOR)
    assert refused.value.code == "exclusive_account"


@pytest.mark.parametrize(
    ("username", "code"),
    [("citizen1", "card_holder"), ("agency_op", "exclusive_account"), ("regulator", "exclusive_account")],
)
def test_card_holders_agency_and_regulator_accounts_are_refused_outright(world: World, username, code) -> None:
    for path in ("/api/v1/members/", "/api/v1/invitations/"):
        assert_problem(invite(world, "alpha_admin", "alpha", username, path=path), 400, "not_invitable")
    assert not Invitation.objects.exists()
    # The rule behind it is the one the direct service path names.
    with pytest.raises(ServiceError) as refused:
        services.add_member(organization=world.alpha, user=world.users[username], role=Membership.Role.OPERATOR)
    assert refused.value.code == code
    # and the agency admin cannot pull a bank member into the agency either
    assert_problem(invite(world, "agency_admin", "agency", "alpha_op"), 400, "not_invitable")


def test_inviting_does_not_tell_a_citizen_or_the_regulator_from_an_unknown_name(world: World) -> None:
    """A bank admin probing usernames learns nothing about who holds a card or works where."""
    answers = []
    for username in ("nobody-at-all", "citizen1", "regulator", "agency_op"):
        response = invite(world, "alpha_admin", "alpha", username)
        body = response.json()
        body.pop("instance", None)
        answers.append((response.status_code, body))
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0][0] == 400 and answers[0][1]["type"].endswith("/not-invitable")


def test_only_admins_of_the_organisation_invite(world: World) -> None:
    make_user("newhire")
    assert invite(world, "alpha_op", "alpha", "newhire").status_code == 403
    assert invite(world, "beta_admin", "alpha", "newhire").status_code == 403
    assert invite(world, "alpha_admin", "alpha", "nobody").status_code == 400
    assert invite(world, "alpha_admin", "alpha", "alpha_op").status_code == 409  # already a member
    assert not Invitation.objects.exists()


# --------------------------------------------------------------------------- the invitation's life


def test_an_invitation_grants_nothing_until_accepted(world: World) -> None:
    newhire = make_user("newhire")
    response = invite(world, "alpha_admin", "alpha", "newhire")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["organization"], body["username"], body["role"], body["state"], body["invited_by"]) == (
        "alpha",
        "newhire",
        "operator",
        "pending",
        "alpha_admin",
    )
    assert response["Location"] == f"/api/v1/invitations/{body['id']}/"
    assert principal(fresh(newhire)).roles == {}
    assert api(newhire).get("/api/v1/security-domains/").json()["count"] == 0
    assert invite(world, "alpha_admin", "alpha", "newhire").status_code == 409  # one pending at a time

    # Outsiders neither see nor answer it; the inviting admin sees it but cannot accept it.
    path = f"/api/v1/invitations/{body['id']}/"
    assert api(world.users["beta_admin"]).get(path).status_code == 404
    assert api(world.users["beta_admin"]).post(path + "accept/").status_code == 404
    assert api(world.users["alpha_admin"]).get(path).status_code == 200
    assert api(world.users["alpha_admin"]).post(path + "accept/").status_code == 403
    assert api(newhire).get("/api/v1/invitations/").json()["count"] == 1

    accepted = api(newhire).post(path + "accept/")
    assert accepted.status_code == 200, accepted.content
    assert accepted.json()["organization"] == "alpha" and accepted.json()["role"] == "operator"
    assert principal(fresh(newhire)).roles == {world.alpha.pk: Membership.Role.OPERATOR}
    assert api(newhire).get("/api/v1/security-domains/").json()["count"] > 0
    assert_problem(api(newhire).post(path + "accept/"), 409, "state")
    actions = list(
        AuditEntry.objects.filter(organization_slug="alpha", subject_type__in=("invitation", "membership"))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions[-3:] == ["invitation.created", "invitation.accepted", "member.added"]


def test_decline_and_revoke(world: World) -> None:
    newhire = make_user("newhire")
    first = invite(world, "alpha_admin", "alpha", "newhire", path="/api/v1/invitations/")
    assert first.status_code == 201
    path = f"/api/v1/invitations/{first.json()['id']}/"
    assert api(newhire).post(path + "decline/").json()["state"] == "declined"
    assert_problem(api(newhire).post(path + "accept/"), 409, "state")

    second = invite(world, "alpha_admin", "alpha", "newhire").json()
    path = f"/api/v1/invitations/{second['id']}/"
    assert api(newhire).post(path + "revoke/").status_code == 403
    assert api(world.users["alpha_op"]).post(path + "revoke/").status_code == 403  # not an admin
    assert api(world.users["beta_admin"]).post(path + "revoke/").status_code == 404  # another bank: not in scope
    assert api(world.users["alpha_admin"]).post(path + "revoke/").json()["state"] == "revoked"
    assert_problem(api(newhire).post(path + "accept/"), 409, "state")
    assert not Membership.objects.filter(user=newhire).exists()
    assert set(AuditEntry.objects.filter(subject_type="invitation").values_list("action", flat=True)) == {
        "invitation.created",
        "invitation.declined",
        "invitation.revoked",
    }


def test_the_rules_are_checked_again_at_acceptance(world: World) -> None:
    newhire = make_user("newhire")
    to_alpha = invite(world, "alpha_admin", "alpha", "newhire").json()
    to_beta = invite(world, "beta_admin", "beta", "newhire").json()
    assert api(newhire).post(f"/api/v1/invitations/{to_alpha['id']}/accept/").status_code == 200
    # Now a member of Alpha: joining Beta too needs the agency's approval.
    assert_problem(api(newhire).post(f"/api/v1/invitations/{to_beta['id']}/accept/"), 400, "needs_agency_approval")
    assert Invitation.objects.get(pk=to_beta["id"]).state == Invitation.State.PENDING

    # A user who became a card holder after being invited cannot accept.
    latecomer = make_user("latecomer")
    pending = invite(world, "alpha_admin", "alpha", "latecomer").json()
    card_services.issue_card(agency=world.agency, holder=latecomer, emulated=False)
    assert_problem(api(latecomer).post(f"/api/v1/invitations/{pending['id']}/accept/"), 400, "card_holder")
    assert not Membership.objects.filter(user=latecomer).exists()


def test_the_agency_allows_a_bank_member_to_join_a_second_bank(world: World) -> None:
    assert_problem(invite(world, "beta_admin", "beta", "alpha_op"), 400, "needs_agency_approval")
    body = {"organization": "beta", "username": "alpha_op"}
    assert api(world.users["beta_admin"]).post("/api/v1/sharing-approvals/", body, format="json").status_code == 403
    assert api(world.users["regulator"]).post("/api/v1/sharing-approvals/", body, format="json").status_code == 403
    approved = api(world.users["agency_op"]).post("/api/v1/sharing-approvals/", body, format="json")
    assert approved.status_code == 201, approved.content
    assert AuditEntry.objects.filter(action="member.sharing_approved", organization_slug="beta").exists()
    assert api(world.users["beta_admin"]).get("/api/v1/sharing-approvals/").json()["count"] == 1
    assert api(world.users["alpha_admin"]).get("/api/v1/sharing-approvals/").json()["count"] == 0
    invitation = invite(world, "beta_admin", "beta", "alpha_op").json()
    assert principal(fresh(world.users["alpha_op"])).bank_ids == [world.alpha.pk]
    alpha_op = fresh(world.users["alpha_op"])
    assert api(alpha_op).post(f"/api/v1/invitations/{invitation['id']}/accept/").status_code == 200
    assert sorted(principal(fresh(alpha_op)).bank_ids) == sorted([world.alpha.pk, world.beta.pk])
    # The approval never covers agency or regulator accounts, or card holders.
    for username, code in (("regulator", "exclusive_account"), ("citizen1", "card_holder")):
        refused = api(world.users["agency_op"]).post(
            "/api/v1/sharing-approvals/", {"organization": "beta", "username": username}, format="json"
        )
        assert_problem(refused, 400, code)


# --------------------------------------------------------------------------- portal


def test_accept_and_decline_in_the_portal(world: World) -> None:
    newhire = make_user("newhire")
    to_alpha = services.invite_member(
        organization=world.alpha, user=newhire, role="auditor", actor=world.users["alpha_admin"]
    )
    to_beta = services.invite_member(
        organization=world.beta, user=newhire, role="operator", actor=world.users["beta_admin"]
    )
    client = Client(raise_request_exception=True)
    client.force_login(newhire)
    page = client.get("/account/invitations/").content.decode()
    assert "Alpha Bank" in page and "Beta Bank" in page
    assert 'href="/account/invitations/"' in page  # the navigation shows it

    # Another user cannot answer it.
    other = Client()
    other.force_login(world.users["beta_admin"])
    assert other.post(f"/account/invitations/{to_alpha.pk}/", {"decision": "accept"}).status_code == 404

    response = client.post(f"/account/invitations/{to_alpha.pk}/", {"decision": "accept"})
    assert response.status_code == 302
    assert principal(fresh(newhire)).roles == {world.alpha.pk: Membership.Role.AUDITOR}
    refused = client.post(f"/account/invitations/{to_beta.pk}/", {"decision": "accept"})
    assert refused.status_code == 400 and "agency operator" in refused.content.decode()
    assert client.post(f"/account/invitations/{to_beta.pk}/", {"decision": "decline"}).status_code == 302
    assert Invitation.objects.get(pk=to_beta.pk).state == Invitation.State.DECLINED
    assert client.get(f"/account/invitations/{to_beta.pk}/").status_code == 405
    assert "You have no invitations" in client.get("/account/invitations/").content.decode()
