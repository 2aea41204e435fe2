"""Portal pages of release review and code signing (issue 18): the agency's queue with approve and
reject, its code-signing settings, a bank's DAP key, the release page's approval and signatures."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from audit.models import AuditEntry
from gp import dap
from issuers import code_signing
from issuers.models import BankDapKey
from tests.factories import World
from updates.demo_cap import build_cap
from updates.models import Release
from updates.releases import create_release

pytestmark = pytest.mark.django_db


def alpha_release(world: World, version: tuple[int, int] = (2, 0)) -> Release:
    package = world.applets["alpha@card1"].package_aid
    return create_release(
        bank=world.alpha,
        cap_bytes=build_cap(package, [package + "01"], version),
        filename="wallet.cap",
        actor=world.users["alpha_op"],
    )


@pytest.fixture
def pending(world: World) -> Release:
    code_signing.set_release_policy(bank=world.alpha, approval="review", actor=None)
    return alpha_release(world)


def test_agency_operator_approves_from_the_queue(world: World, as_user, pending: Release) -> None:
    client = as_user("agency_op")
    page = client.get("/agency/releases/")
    assert page.status_code == 200 and pending.lfdb_sha256 in page.content.decode()
    response = client.post("/agency/releases/", {"id": pending.pk, "action": "approve"})
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.state == Release.State.APPROVED and pending.approved_by == world.users["agency_op"]
    assert (
        AuditEntry.objects.get(action="release.approved", subject_id=str(pending.pk)).actor_user
        == world.users["agency_op"]
    )
    page = client.get("/agency/releases/").content.decode()
    assert "No release awaits review." in page and "agency_op" in page
    # Approving twice says why, without a server error.
    again = client.post("/agency/releases/", {"id": pending.pk, "action": "approve"})
    assert again.status_code == 409 and "not awaiting review" in again.content.decode()


def test_reject_needs_a_reason_shown_to_the_bank(world: World, as_user, pending: Release) -> None:
    client = as_user("agency_op")
    assert client.post("/agency/releases/", {"id": pending.pk, "action": "reject", "reason": ""}).status_code == 400
    pending.refresh_from_db()
    assert pending.state == Release.State.PENDING
    response = client.post("/agency/releases/", {"id": pending.pk, "action": "reject", "reason": "unsafe"})
    assert response.status_code == 302
    page = as_user("alpha_op").get(f"/bank/alpha/releases/{pending.pk}/").content.decode()
    assert "rejected by agency_op" in page and "unsafe" in page and "Roll out this release" not in page


def test_who_may_review_in_the_portal(world: World, as_user, pending: Release) -> None:
    assert as_user("alpha_admin").get("/agency/releases/").status_code == 403
    assert as_user("regulator").post("/agency/releases/", {"id": pending.pk, "action": "approve"}).status_code == 403
    for hostile in ({"id": "abc", "action": "approve"}, {"id": pending.pk, "action": "delete"}, {"id": 10**30}):
        assert as_user("agency_op").post("/agency/releases/", hostile).status_code == 404
    pending.refresh_from_db()
    assert pending.state == Release.State.PENDING


def test_the_release_page_shows_approval_and_signatures(world: World, as_user, pending: Release) -> None:
    page = as_user("alpha_op").get(f"/bank/alpha/releases/{pending.pk}/").content.decode()
    assert "awaiting review by an agency operator" in page and "Not ready for cards" in page
    assert "Roll out this release" not in page


def test_bank_sets_its_dap_key_and_signs_a_release(world: World, as_user) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    point = dap.public_point(key.public_key()).hex()
    assert as_user("alpha_op").post("/bank/alpha/dap-key/", {"point": point}).status_code == 403
    assert as_user("beta_admin").get("/bank/alpha/dap-key/").status_code == 404
    bad = as_user("alpha_admin").post("/bank/alpha/dap-key/", {"point": "04" + "00" * 64})
    assert bad.status_code == 400 and "not a point on P-256" in bad.content.decode()
    assert as_user("alpha_admin").post("/bank/alpha/dap-key/", {"point": point}).status_code == 302
    fingerprint = BankDapKey.objects.get(bank=world.alpha).fingerprint
    assert fingerprint in as_user("alpha_op").get("/bank/alpha/dap-key/").content.decode()
    release = alpha_release(world)
    page = as_user("alpha_op").get(f"/bank/alpha/releases/{release.pk}/").content.decode()
    assert "has no DAP signature of Alpha Bank" in page
    url = f"/bank/alpha/releases/{release.pk}/dap-signature/"
    wrong = as_user("alpha_op").post(url, {"signature": "11" * 64})
    assert wrong.status_code == 400 and "does not verify" in wrong.content.decode()
    signature = dap.sign(key, bytes.fromhex(release.lfdb_sha256)).hex()
    assert as_user("alpha_auditor").post(url, {"signature": signature}).status_code == 403
    assert as_user("alpha_op").post(url, {"signature": signature}).status_code == 302
    page = as_user("alpha_op").get(f"/bank/alpha/releases/{release.pk}/").content.decode()
    assert "Not ready for cards" not in page and "Roll out this release" in page


def test_agency_admin_turns_on_mandated_dap_and_sets_a_policy(world: World, as_user) -> None:
    release = alpha_release(world)
    assert (
        as_user("agency_op").post("/agency/code-signing/", {"form": "mandated", "mandated_dap": "on"}).status_code
        == 403
    )
    client = as_user("agency_admin")
    assert client.post("/agency/code-signing/", {"form": "mandated", "mandated_dap": "on"}).status_code == 302
    page = client.get("/agency/code-signing/").content.decode()
    assert "Mandated DAP is <strong>on</strong>" in page
    assert code_signing.fingerprint(code_signing.mandated_dap_public_point()) in page
    release.refresh_from_db()
    assert release.agency_dap_signature
    assert (
        client.post(
            "/agency/code-signing/", {"form": "policy", "bank": world.alpha.pk, "approval": "review"}
        ).status_code
        == 302
    )
    assert code_signing.release_approval(world.alpha) == "review"
    bad = client.post("/agency/code-signing/", {"form": "policy", "bank": world.agency.pk, "approval": "review"})
    assert bad.status_code == 400
    assert client.post("/agency/code-signing/", {"form": "other"}).status_code == 404
