"""Releases API: upload (multipart), list/retrieve scoped to the bank, revoke, changelog; bad files
refused with a precise reason as problem JSON, nothing stored."""

from __future__ import annotations

import io

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEntry
from issuers import services as issuer_services
from issuers.models import Membership
from tests.factories import World
from updates import rollouts
from updates.demo_cap import build_cap
from updates.models import Release, Rollout

pytestmark = pytest.mark.django_db


def client_for(world: World, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[username])
    return client


def alpha_package(world: World) -> str:
    return world.applets["alpha@card1"].package_aid


def alpha_cap(world: World, version: tuple[int, int] = (2, 0), **kwargs) -> bytes:
    package = alpha_package(world)
    return build_cap(package, [package + "01"], version, name="alpha.app", **kwargs)


def upload(client: APIClient, data: bytes, name: str = "app.cap", **extra):
    handle = io.BytesIO(data)
    handle.name = name
    return client.post("/api/v1/releases/", {"cap_file": handle, **extra}, format="multipart")


def assert_problem(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    for fragment in fragments:
        assert fragment in body["detail"], body


def test_bank_operator_uploads_a_release(world: World) -> None:
    response = upload(client_for(world, "alpha_op"), alpha_cap(world), "alpha-2.0.cap", changelog="Faster PIN check")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["bank"] == "alpha" and body["version"] == "2.0" and body["state"] == "approved"
    assert body["package_aid"] == alpha_package(world) and body["changelog"] == "Faster PIN check"
    assert body["filename"] == "alpha-2.0.cap" and body["created_by"] == "alpha_op"
    assert len(body["lfdb_sha256"]) == 64 and len(body["cap_sha256"]) == 64 and body["lfdb_size"] > 0
    assert "cap_file" not in body
    release = Release.objects.get(pk=body["id"])
    assert AuditEntry.objects.filter(action="release.created", subject_id=str(release.pk)).exists()


def test_releases_are_visible_to_their_bank_only(world: World) -> None:
    release_id = upload(client_for(world, "alpha_op"), alpha_cap(world)).json()["id"]
    for username in ("alpha_op", "alpha_admin", "alpha_auditor", "agency_op", "regulator"):
        client = client_for(world, username)
        assert client.get(f"/api/v1/releases/{release_id}/").status_code == 200, username
        assert [r["id"] for r in client.get("/api/v1/releases/").json()["results"]] == [release_id], username
    for username in ("beta_op", "beta_admin", "citizen1", "outsider"):
        client = client_for(world, username)
        assert_problem(client.get(f"/api/v1/releases/{release_id}/"), 404)
        assert client.get("/api/v1/releases/").json()["count"] == 0, username
        assert client.post(f"/api/v1/releases/{release_id}/revoke/").status_code in (403, 404)
    assert APIClient().get("/api/v1/releases/").status_code in (401, 403)


@pytest.mark.parametrize("username", ["alpha_auditor", "citizen1", "regulator", "outsider"])
def test_only_bank_operators_upload(world: World, username: str) -> None:
    assert_problem(upload(client_for(world, username), alpha_cap(world)), 403)
    assert not Release.objects.exists()


def test_bad_files_are_refused_with_a_precise_reason_and_nothing_stored(world: World) -> None:
    client = client_for(world, "alpha_op")
    assert upload(client, alpha_cap(world, (1, 5))).status_code == 201
    stored = Release.objects.count()
    beta_package = world.applets["beta@card2"].package_aid
    cases = [
        (b"hello, not a cap", 400, "not a valid CAP file"),
        (b"", 400, "not a valid CAP file"),
        (b"PK\x03\x04" + bytes(40), 400, "not a valid CAP file"),
        (alpha_cap(world)[:300], 400, "not a valid CAP file"),
        (build_cap(beta_package, [beta_package + "01"]), 400, f"{beta_package} is outside Alpha Bank's AID range"),
        (alpha_cap(world, imports=(("A0000000620101", (1, 9)),)), 400, "imports A0000000620101 version 1.9"),
        (alpha_cap(world, imports=(("A0000009990177", (1, 0)),)), 400, "neither on the cards nor a release"),
        (alpha_cap(world, code_size=60_000), 400, "too large to load"),
        (bytes(1024 * 1024 + 1), 400, "larger than 1024 KiB"),
        (alpha_cap(world, (1, 5)), 409, "already uploaded"),
        (alpha_cap(world, (1, 5), code_size=300), 409, "version 1.5 already exists"),
    ]
    for data, status, fragment in cases:
        response = upload(client, data)
        assert_problem(response, status, fragment)
        assert response.json()["errors"]["cap_file"]
    assert_problem(client.post("/api/v1/releases/", {"changelog": "x"}, format="multipart"), 400, "cap_file")
    assert_problem(client.post("/api/v1/releases/", {"cap_file": "text"}, format="json"), 400, "cap_file")
    assert Release.objects.count() == stored
    assert AuditEntry.objects.filter(action="release.created").count() == stored


def test_an_operator_of_two_banks_names_the_bank(world: World) -> None:
    user = world.users["alpha_op"]
    # A member of two banks: only with the agency's approval (organisations never share a user otherwise).
    issuer_services.approve_shared_member(organization=world.beta, user=user, actor=world.users["agency_op"])
    issuer_services.add_member(organization=world.beta, user=user, role=Membership.Role.OPERATOR)
    client = client_for(world, "alpha_op")
    assert_problem(upload(client, alpha_cap(world)), 400, "name the bank")
    assert_problem(upload(client, alpha_cap(world), bank="agency"), 400, "you do not operate")
    assert upload(client, alpha_cap(world), bank="alpha").json()["bank"] == "alpha"


def test_revoke_a_release(world: World) -> None:
    release_id = upload(client_for(world, "alpha_op"), alpha_cap(world)).json()["id"]
    assert_problem(client_for(world, "alpha_auditor").post(f"/api/v1/releases/{release_id}/revoke/"), 403)
    response = client_for(world, "alpha_op").post(
        f"/api/v1/releases/{release_id}/revoke/", {"reason": "PIN bypass"}, format="json"
    )
    assert response.status_code == 200 and response.json()["state"] == "revoked"
    entry = AuditEntry.objects.get(action="release.revoked", subject_id=str(release_id))
    assert entry.reason == "PIN bypass" and entry.actor_name == "alpha_op"
    assert_problem(client_for(world, "alpha_op").post(f"/api/v1/releases/{release_id}/revoke/"), 409, "already")
    # The agency can revoke a bank's release too.
    other = upload(client_for(world, "alpha_op"), alpha_cap(world, (3, 0))).json()["id"]
    assert client_for(world, "agency_op").post(f"/api/v1/releases/{other}/revoke/").json()["state"] == "revoked"


def test_revoking_a_release_pauses_its_rollouts(world: World) -> None:
    release = Release.objects.get(pk=upload(client_for(world, "alpha_op"), alpha_cap(world)).json()["id"])
    rollout = rollouts.create_rollout(bank=world.alpha, release=release, actor=world.users["alpha_op"], groups=["100%"])
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    assert rollout.targets.filter(job__state="pending").count() == 2  # card1 and card3 carry Alpha's applet
    client_for(world, "alpha_op").post(f"/api/v1/releases/{release.pk}/revoke/", {"reason": "bug"}, format="json")
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.PAUSED and "revoked: bug" in rollout.pause_reason
    assert rollout.targets.filter(job__state="cancelled").count() == 2
    assert_problem(client_for(world, "alpha_op").post(f"/api/v1/rollouts/{rollout.pk}/resume/"), 409, "revoked")
    # No new rollout of a revoked release.
    response = client_for(world, "alpha_op").post(
        "/api/v1/rollouts/", {"release": release.pk, "groups": ["100%"]}, format="json"
    )
    assert_problem(response, 400, "revoked")


def test_the_changelog_is_the_only_editable_field(world: World) -> None:
    body = upload(client_for(world, "alpha_op"), alpha_cap(world), changelog="v2").json()
    response = client_for(world, "alpha_op").patch(
        f"/api/v1/releases/{body['id']}/",
        {"changelog": "v2: contactless limits", "package_aid": "A0", "cap_sha256": "00"},
        format="json",
    )
    assert response.status_code == 200, response.content
    after = response.json()
    assert after["changelog"] == "v2: contactless limits"
    assert {k: v for k, v in after.items() if k != "changelog"} == {k: v for k, v in body.items() if k != "changelog"}
    assert AuditEntry.objects.filter(action="release.changelog_updated", subject_id=str(body["id"])).exists()
    assert_problem(
        client_for(world, "beta_op").patch(f"/api/v1/releases/{body['id']}/", {"changelog": "x"}, format="json"), 404
    )
    # Neither replaced nor deleted: releases are immutable.
    assert client_for(world, "alpha_op").put(f"/api/v1/releases/{body['id']}/", {}, format="json").status_code in (
        403,
        405,
    )
    assert client_for(world, "alpha_op").delete(f"/api/v1/releases/{body['id']}/").status_code in (403, 405)
    assert Release.objects.filter(pk=body["id"], cap_sha256=body["cap_sha256"]).exists()


def test_an_unexpected_parser_error_is_a_refusal_not_a_500(world: World, monkeypatch) -> None:
    from gp.cap import LoadFile

    def broken(cls, data, name=""):
        raise IndexError("index out of range")

    monkeypatch.setattr(LoadFile, "from_bytes", classmethod(broken))
    assert_problem(upload(client_for(world, "alpha_op"), alpha_cap(world)), 400, "unreadable (IndexError)")
    assert not Release.objects.exists()


def test_the_demo_cap_builder_is_deterministic() -> None:
    """The same package built twice is the same file (a re-upload is "already uploaded", never a
    second version), whatever the clock says between the builds."""
    import time

    first = build_cap("A00000099901", ["A0000009990101"], (1, 5))
    time.sleep(2.1)  # past the zip format's 2-second timestamp resolution
    assert build_cap("A00000099901", ["A0000009990101"], (1, 5)) == first
