"""The release approval and code-signing API (issue 18): who may approve, reject, sign, set the
policy, the DAP key and Mandated DAP; hostile input is a 400 problem document."""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from rest_framework.test import APIClient

from audit.models import AuditEntry
from gp import dap
from issuers import code_signing
from tests.factories import World
from updates.demo_cap import build_cap
from updates.models import Release

pytestmark = pytest.mark.django_db


def client_for(world: World, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[username])
    return client


def upload(world: World, username: str = "alpha_op", version: tuple[int, int] = (2, 0)) -> dict:
    package = world.applets["alpha@card1"].package_aid
    handle = io.BytesIO(build_cap(package, [package + "01"], version, name="alpha.app"))
    handle.name = "alpha.cap"
    response = client_for(world, username).post("/api/v1/releases/", {"cap_file": handle}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


def problem(response, status: int, fragment: str = "") -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert fragment in str(body), body
    return body


def put_policy(world: World, username: str, approval: object, bank: str = "alpha"):
    return client_for(world, username).put(
        f"/api/v1/organizations/{bank}/release-policy/", {"approval": approval}, format="json"
    )


def test_review_then_approve_over_the_api(world: World) -> None:
    assert put_policy(world, "agency_admin", "review").json() == {"approval": "review"}
    body = upload(world)
    assert body["state"] == "pending" and body["approved_by"] is None
    rollout = client_for(world, "alpha_op").post(
        "/api/v1/rollouts/", {"release": body["id"], "groups": ["100%"]}, format="json"
    )
    problem(rollout, 409, "awaiting agency review")
    approved = client_for(world, "agency_op").post(f"/api/v1/releases/{body['id']}/approve/")
    assert approved.status_code == 200, approved.content
    assert approved.json()["state"] == "approved" and approved.json()["approved_by"] == "agency_op"
    rollout = client_for(world, "alpha_op").post(
        "/api/v1/rollouts/", {"release": body["id"], "groups": ["100%"]}, format="json"
    )
    assert rollout.status_code == 201, rollout.content


@pytest.mark.parametrize("username", ["alpha_admin", "alpha_op", "regulator"])
def test_a_bank_or_a_regulator_cannot_approve(world: World, username: str) -> None:
    put_policy(world, "agency_admin", "review")
    body = upload(world)
    problem(client_for(world, username).post(f"/api/v1/releases/{body['id']}/approve/"), 403)
    problem(client_for(world, username).post(f"/api/v1/releases/{body['id']}/reject/", {"reason": "x"}), 403)
    assert Release.objects.get(pk=body["id"]).state == Release.State.PENDING


def test_another_banks_release_does_not_exist_for_a_bank(world: World) -> None:
    body = upload(world)
    problem(
        client_for(world, "beta_op").post(f"/api/v1/releases/{body['id']}/dap-signature/", {"signature": "00"}), 404
    )
    problem(client_for(world, "beta_admin").post(f"/api/v1/releases/{body['id']}/approve/"), 404)
    problem(client_for(world, "agency_op").post("/api/v1/releases/999999/approve/"), 404)


def test_reject_over_the_api(world: World) -> None:
    put_policy(world, "agency_admin", "review")
    body = upload(world)
    problem(client_for(world, "agency_op").post(f"/api/v1/releases/{body['id']}/reject/", {}, format="json"), 400)
    response = client_for(world, "agency_op").post(
        f"/api/v1/releases/{body['id']}/reject/", {"reason": "fails review"}, format="json"
    )
    assert response.status_code == 200 and response.json()["state"] == "rejected"
    assert response.json()["rejection_reason"] == "fails review"
    problem(client_for(world, "agency_op").post(f"/api/v1/releases/{body['id']}/approve/"), 409, "rejected")


def test_only_agency_admins_set_the_policy_and_hostile_values_are_400(world: World) -> None:
    for username in ("alpha_admin", "agency_op", "regulator"):
        problem(put_policy(world, username, "review"), 403)
    problem(put_policy(world, "agency_admin", "never"), 400, "approval")
    problem(put_policy(world, "agency_admin", ["review"]), 400)
    problem(put_policy(world, "agency_admin", "review", bank="agency"), 404)
    problem(put_policy(world, "agency_admin", "review", bank="nobody"), 404)
    assert client_for(world, "alpha_op").get("/api/v1/organizations/alpha/release-policy/").json() == {
        "approval": "auto"
    }
    problem(client_for(world, "beta_op").get("/api/v1/organizations/alpha/release-policy/"), 404)
    assert AuditEntry.objects.filter(action="code_signing.release_policy_set").count() == 0


def test_the_bank_sets_its_dap_key_and_signs(world: World) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    point = dap.public_point(key.public_key())
    problem(
        client_for(world, "alpha_op").put(
            "/api/v1/organizations/alpha/dap-key/", {"point": point.hex()}, format="json"
        ),
        403,
    )
    problem(
        client_for(world, "agency_admin").put("/api/v1/organizations/alpha/dap-key/", {"point": point.hex()}),
        403,
    )
    for hostile in ("04" + "00" * 64, "zz", "02" + point.hex()[2:66], "04" * 300):
        problem(
            client_for(world, "alpha_admin").put(
                "/api/v1/organizations/alpha/dap-key/", {"point": hostile}, format="json"
            ),
            400,
        )
    response = client_for(world, "alpha_admin").put(
        "/api/v1/organizations/alpha/dap-key/", {"point": point.hex()}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["fingerprint"] == code_signing.fingerprint(point)
    assert response.json()["point"] == point.hex().upper()
    body = upload(world)
    url = f"/api/v1/releases/{body['id']}/dap-signature/"
    problem(client_for(world, "alpha_op").post(url, {"signature": "ab" * 64}, format="json"), 400, "does not verify")
    problem(client_for(world, "alpha_op").post(url, {"signature": "ab" * 65}, format="json"), 400)
    problem(client_for(world, "alpha_op").post(url, {"signature": ["ab"]}, format="json"), 400)
    signature = dap.sign(key, bytes.fromhex(body["lfdb_sha256"])).hex()
    problem(client_for(world, "agency_op").post(url, {"signature": signature}, format="json"), 403)
    signed = client_for(world, "alpha_op").post(url, {"signature": signature}, format="json")
    assert signed.status_code == 200, signed.content
    assert signed.json()["dap_signature"] == signature.upper()


def test_mandated_dap_settings(world: World) -> None:
    assert client_for(world, "regulator").get("/api/v1/code-signing/").json()["mandated_dap"] is False
    problem(client_for(world, "alpha_admin").get("/api/v1/code-signing/"), 403)
    problem(client_for(world, "agency_op").put("/api/v1/code-signing/", {"mandated_dap": True}, format="json"), 403)
    problem(client_for(world, "regulator").put("/api/v1/code-signing/", {"mandated_dap": True}, format="json"), 403)
    problem(
        client_for(world, "agency_admin").put("/api/v1/code-signing/", {"mandated_dap": "maybe"}, format="json"), 400
    )
    body = upload(world)
    response = client_for(world, "agency_admin").put("/api/v1/code-signing/", {"mandated_dap": True}, format="json")
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["mandated_dap"] is True and answer["signed"] == 1
    release = Release.objects.get(pk=body["id"])
    assert dap.verify(
        bytes.fromhex(answer["mandated_dap_point"]),
        bytes.fromhex(release.lfdb_sha256),
        bytes.fromhex(release.agency_dap_signature),
    )
    entry = AuditEntry.objects.get(action="code_signing.mandated_dap_set")
    assert entry.actor_user == world.users["agency_admin"]
