"""Release approval and code signing on the platform (issue 18): the agency's review policy, the
bank's DAP signature over the load file hash, the agency's Mandated DAP, and the refusal of a
rollout of a release that is not approved or not signed as the cards check."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from audit.models import AuditEntry
from ecard.errors import ServiceError
from gp import dap
from issuers import code_signing
from issuers.custody import load_private_key
from issuers.custody_models import KeySet
from tests.factories import World
from updates import releases, rollouts, selectors
from updates.demo_cap import build_cap
from updates.models import Release

pytestmark = pytest.mark.django_db


def alpha_release(world: World, version: tuple[int, int] = (2, 0), actor: str = "alpha_op") -> Release:
    package = world.applets["alpha@card1"].package_aid
    cap = build_cap(package, [package + "01"], version, name="alpha.app")
    return releases.create_release(bank=world.alpha, cap_bytes=cap, filename="alpha.cap", actor=world.users[actor])


def beta_release(world: World) -> Release:
    package = world.applets["beta@card2"].package_aid
    cap = build_cap(package, [package + "01"], (2, 0), name="beta.app")
    return releases.create_release(bank=world.beta, cap_bytes=cap, filename="beta.cap", actor=world.users["beta_op"])


def review_policy(world: World) -> None:
    code_signing.set_release_policy(bank=world.alpha, approval="review", actor=world.users["agency_admin"])


def dap_key(world: World, bank: str = "alpha") -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    code_signing.set_bank_dap_key(
        bank=getattr(world, bank), point=dap.public_point(key.public_key()), actor=world.users[f"{bank}_admin"]
    )
    return key


def signature_of(key: ec.EllipticCurvePrivateKey, release: Release) -> str:
    return dap.sign(key, bytes.fromhex(release.lfdb_sha256)).hex()


def roll_out(world: World, release: Release):
    return rollouts.create_rollout(bank=world.alpha, release=release, actor=world.users["alpha_op"], groups=["100%"])


def test_auto_policy_approves_at_upload_with_no_approver(world: World) -> None:
    release = alpha_release(world)
    assert release.state == Release.State.APPROVED and release.approval == Release.Approval.AUTO
    assert release.approved_by is None and release.approved_at is not None
    entry = AuditEntry.objects.get(action="release.approved", subject_id=str(release.pk))
    assert entry.actor_user is None and entry.details["approval"] == "auto"
    assert roll_out(world, release).total == 2


def test_review_policy_holds_a_release_and_its_rollout_is_a_conflict(world: World) -> None:
    review_policy(world)
    release = alpha_release(world)
    assert release.state == Release.State.PENDING and release.approval == Release.Approval.REVIEW
    assert list(selectors.pending_releases()) == [release]
    with pytest.raises(ServiceError) as refused:
        roll_out(world, release)
    assert refused.value.http_status == 409 and "awaiting agency review" in refused.value.message
    assert not AuditEntry.objects.filter(action="release.approved", subject_id=str(release.pk)).exists()


def test_approval_is_audited_with_the_approver_and_opens_the_rollout(world: World) -> None:
    review_policy(world)
    release = alpha_release(world)
    approved = releases.approve_release(release=release, actor=world.users["agency_op"])
    assert approved.state == Release.State.APPROVED and approved.approved_by == world.users["agency_op"]
    entry = AuditEntry.objects.get(action="release.approved", subject_id=str(release.pk))
    assert entry.actor_user == world.users["agency_op"] and entry.details["approval"] == "review"
    assert list(selectors.pending_releases()) == []
    assert roll_out(world, approved).total == 2
    with pytest.raises(ServiceError) as again:
        releases.approve_release(release=approved, actor=world.users["agency_op"])
    assert again.value.http_status == 409


def test_only_an_agency_operator_outside_the_bank_reviews(world: World) -> None:
    review_policy(world)
    release = alpha_release(world)
    for username in ("alpha_admin", "alpha_op", "beta_admin", "regulator"):
        with pytest.raises(ServiceError) as refused:
            releases.approve_release(release=release, actor=world.users[username])
        assert refused.value.code == "forbidden", username
    # An agency operator who also belongs to the bank (a shared member) does not review its releases.
    from issuers.models import Membership

    Membership.objects.create(user=world.users["agency_op"], organization=world.alpha, role=Membership.Role.AUDITOR)
    agency_op = type(world.users["agency_op"]).objects.get(pk=world.users["agency_op"].pk)
    with pytest.raises(ServiceError, match="member of Alpha Bank"):
        releases.approve_release(release=release, actor=agency_op)
    release.refresh_from_db()
    assert release.state == Release.State.PENDING


def test_reject_needs_a_reason_and_is_final(world: World) -> None:
    review_policy(world)
    release = alpha_release(world)
    with pytest.raises(ServiceError, match="say why"):
        releases.reject_release(release=release, actor=world.users["agency_op"], reason="  ")
    rejected = releases.reject_release(release=release, actor=world.users["agency_op"], reason="uses a private API")
    assert rejected.state == Release.State.REJECTED and rejected.rejection_reason == "uses a private API"
    assert rejected.rejected_by == world.users["agency_op"]
    entry = AuditEntry.objects.get(action="release.rejected", subject_id=str(release.pk))
    assert entry.actor_user == world.users["agency_op"] and entry.reason == "uses a private API"
    with pytest.raises(ServiceError) as refused:
        releases.approve_release(release=rejected, actor=world.users["agency_op"])
    assert refused.value.http_status == 409
    with pytest.raises(ServiceError) as no_rollout:
        roll_out(world, rejected)
    assert no_rollout.value.http_status == 409 and "rejected" in no_rollout.value.message


def test_a_bank_with_a_dap_key_needs_a_valid_signature_before_a_rollout(world: World) -> None:
    key = dap_key(world)
    release = alpha_release(world)
    with pytest.raises(ServiceError) as unsigned:
        roll_out(world, release)
    assert unsigned.value.http_status == 409 and "no DAP signature" in unsigned.value.message
    assert selectors.release_dap_blocks(release) == []
    signed = releases.add_dap_signature(
        release=release, signature=signature_of(key, release), actor=world.users["alpha_op"]
    )
    assert releases.check_bank_signature(signed)
    assert selectors.release_dap_blocks(signed) == [("bank", bytes.fromhex(signed.dap_signature))]
    entry = AuditEntry.objects.get(action="release.dap_signed", subject_id=str(release.pk))
    assert entry.actor_user == world.users["alpha_op"]
    assert entry.details["fingerprint"] == hashlib.sha256(dap.public_point(key.public_key())).hexdigest()
    assert roll_out(world, signed).total == 2


def test_a_wrong_signature_is_refused_and_nothing_is_stored(world: World) -> None:
    key = dap_key(world)
    release = alpha_release(world)
    other = alpha_release(world, (2, 1))
    cases = {
        signature_of(key, other): "does not verify with Alpha Bank's DAP key",  # signs another load file
        signature_of(ec.generate_private_key(ec.SECP256R1()), release): "does not verify",  # nobody's key
        "00" * 64: "does not verify",
        "zz" * 64: "hex",
        "ab" * 63: "64 bytes",
        "ab" * 500: "64 bytes",
    }
    for signature, fragment in cases.items():
        with pytest.raises(ServiceError, match=fragment) as refused:
            releases.add_dap_signature(release=release, signature=signature, actor=world.users["alpha_op"])
        assert refused.value.http_status == 400
    release.refresh_from_db()
    assert release.dap_signature == "" and not releases.check_bank_signature(release)


def test_another_banks_signature_is_refused_as_such(world: World) -> None:
    dap_key(world)
    beta_key = dap_key(world, "beta")
    release = alpha_release(world)
    with pytest.raises(ServiceError, match="another bank's DAP key, not Alpha Bank's"):
        releases.add_dap_signature(
            release=release, signature=signature_of(beta_key, release), actor=world.users["alpha_op"]
        )


def test_a_bank_does_not_sign_another_banks_release(world: World) -> None:
    beta_key = dap_key(world, "beta")
    release = beta_release(world)
    with pytest.raises(ServiceError) as refused:
        releases.add_dap_signature(
            release=release, signature=signature_of(beta_key, release), actor=world.users["alpha_op"]
        )
    assert refused.value.code == "forbidden"


def test_a_new_dap_key_voids_earlier_signatures(world: World) -> None:
    key = dap_key(world)
    release = alpha_release(world)
    releases.add_dap_signature(release=release, signature=signature_of(key, release), actor=world.users["alpha_op"])
    dap_key(world)  # the bank replaces its key
    release.refresh_from_db()
    assert not releases.check_bank_signature(release)
    with pytest.raises(ServiceError, match="current DAP key") as refused:
        roll_out(world, release)
    assert refused.value.http_status == 409


def test_mandated_dap_signs_approved_releases_with_the_agency_key(world: World) -> None:
    earlier = alpha_release(world)
    settings_row, signed = releases.set_mandated_dap_policy(enabled=True, actor=world.users["agency_admin"])
    assert settings_row.mandated_dap and signed == 1
    point = code_signing.mandated_dap_public_point()
    earlier.refresh_from_db()
    assert dap.verify(point, bytes.fromhex(earlier.lfdb_sha256), bytes.fromhex(earlier.agency_dap_signature))
    # A release approved on review is signed on approval.
    review_policy(world)
    release = alpha_release(world, (2, 1))
    assert release.agency_dap_signature == ""
    approved = releases.approve_release(release=release, actor=world.users["agency_op"])
    assert dap.verify(point, bytes.fromhex(approved.lfdb_sha256), bytes.fromhex(approved.agency_dap_signature))
    assert selectors.release_dap_blocks(approved) == [("agency", bytes.fromhex(approved.agency_dap_signature))]
    assert AuditEntry.objects.filter(action="release.agency_dap_signed", subject_id=str(release.pk)).exists()
    # The private key is in custody, wrapped: the key set holds no clear scalar.
    keyset = KeySet.objects.get(purpose=KeySet.Purpose.MANDATED_DAP, state=KeySet.State.ACTIVE)
    assert keyset.organization == world.agency and keyset.kvn == dap.DAP_KVN
    private = load_private_key(keyset)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and dap.public_point(private.public_key()) == point
    assert private.private_numbers().private_value.to_bytes(32, "big") not in bytes(keyset.wrapped)


def test_a_forged_agency_signature_blocks_the_rollout_under_mandated_dap(world: World) -> None:
    releases.set_mandated_dap_policy(enabled=True, actor=world.users["agency_admin"])
    release = alpha_release(world)
    forger = ec.generate_private_key(ec.SECP256R1())
    Release.objects.filter(pk=release.pk).update(agency_dap_signature=signature_of(forger, release))
    release.refresh_from_db()
    with pytest.raises(ServiceError, match="Mandated DAP signature does not verify") as refused:
        roll_out(world, release)
    assert refused.value.http_status == 409
    assert selectors.release_dap_blocks(release) == []
    releases.agency_dap_sign(release=release, actor=world.users["agency_op"])
    release.refresh_from_db()
    assert roll_out(world, release).total == 2


def test_a_running_rollout_does_not_resume_once_the_key_changes(world: World) -> None:
    key = dap_key(world)
    release = alpha_release(world)
    release = releases.add_dap_signature(
        release=release, signature=signature_of(key, release), actor=world.users["alpha_op"]
    )
    rollout = roll_out(world, release)
    rollouts.start_rollout(rollout=rollout, actor=world.users["alpha_op"])
    rollouts.pause_rollout(rollout=rollout, actor=world.users["alpha_op"], reason="check")
    dap_key(world)
    with pytest.raises(ServiceError) as refused:
        rollouts.resume_rollout(rollout=rollout, actor=world.users["alpha_op"])
    assert refused.value.http_status == 409 and "sign it again" in refused.value.message
