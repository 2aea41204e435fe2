"""issuers.code_signing: the banks' DAP keys, the release policy per bank, Mandated DAP in custody."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from audit.models import AuditEntry
from ecard.errors import ServiceError
from gp import dap
from issuers import code_signing
from issuers.custody_models import KeySet
from issuers.models import BankDapKey, ReleasePolicy
from tests.factories import World

pytestmark = pytest.mark.django_db


def point() -> bytes:
    return dap.public_point(ec.generate_private_key(ec.SECP256R1()).public_key())


def test_a_bank_admin_sets_the_dap_key_audited_by_fingerprint(world: World) -> None:
    first, second = point(), point()
    key = code_signing.set_bank_dap_key(bank=world.alpha, point=first.hex(), actor=world.users["alpha_admin"])
    assert key.fingerprint == hashlib.sha256(first).hexdigest() and code_signing.bank_dap_point(world.alpha) == first
    code_signing.set_bank_dap_key(bank=world.alpha, point=second, actor=world.users["alpha_admin"])
    entries = list(AuditEntry.objects.filter(action="code_signing.bank_dap_key_set").order_by("id"))
    assert [e.details["fingerprint"] for e in entries] == [
        code_signing.fingerprint(first),
        code_signing.fingerprint(second),
    ]
    assert entries[1].details["previous_fingerprint"] == code_signing.fingerprint(first)
    assert entries[1].actor_user == world.users["alpha_admin"]
    assert BankDapKey.objects.filter(bank=world.alpha).count() == 1


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("not hex", "not hex"),
        ("04" + "11" * 64, "not a point"),
        ("02" + "11" * 32, "65-byte"),
        ("04" * 500, "65 bytes"),
        (b"\x04" + b"\x00" * 64, "not a point"),
    ],
)
def test_a_dap_key_that_is_not_a_p256_point_is_refused(world: World, value: str | bytes, fragment: str) -> None:
    with pytest.raises(ServiceError, match=fragment) as refused:
        code_signing.set_bank_dap_key(bank=world.alpha, point=value, actor=world.users["alpha_admin"])
    assert refused.value.field == "point" and refused.value.http_status == 400
    assert not BankDapKey.objects.exists()


def test_who_sets_what(world: World) -> None:
    for username in ("alpha_op", "beta_admin", "agency_admin"):
        with pytest.raises(ServiceError) as refused:
            code_signing.set_bank_dap_key(bank=world.alpha, point=point(), actor=world.users[username])
        assert refused.value.code == "forbidden"
    with pytest.raises(ServiceError, match="only a bank"):
        code_signing.set_bank_dap_key(bank=world.agency, point=point(), actor=None)
    for username in ("agency_op", "alpha_admin", "regulator"):
        with pytest.raises(ServiceError):
            code_signing.set_release_policy(bank=world.alpha, approval="review", actor=world.users[username])
        with pytest.raises(ServiceError):
            code_signing.set_mandated_dap(enabled=True, actor=world.users[username])
    assert code_signing.release_approval(world.alpha) == ReleasePolicy.Approval.AUTO
    assert not code_signing.mandated_dap_enabled()


def test_release_policy_is_audited_and_validated(world: World) -> None:
    with pytest.raises(ServiceError, match="approval is one of"):
        code_signing.set_release_policy(bank=world.alpha, approval="sometimes", actor=world.users["agency_admin"])
    code_signing.set_release_policy(bank=world.alpha, approval="review", actor=world.users["agency_admin"])
    assert code_signing.release_approval(world.alpha) == "review"
    assert code_signing.release_approval(world.beta) == "auto"
    entry = AuditEntry.objects.get(action="code_signing.release_policy_set")
    assert entry.actor_user == world.users["agency_admin"] and entry.details["approval"] == "review"


def test_mandated_dap_key_is_made_in_custody_and_signs_verifiably(world: World) -> None:
    code_signing.set_mandated_dap(enabled=True, actor=world.users["agency_admin"])
    assert code_signing.mandated_dap_enabled()
    digest = hashlib.sha256(b"a load file data block").digest()
    signature = code_signing.mandated_dap_sign(digest)
    the_point = code_signing.mandated_dap_public_point()
    assert dap.verify(the_point, digest, signature) and code_signing.verify_mandated_dap(digest, signature)
    assert not code_signing.verify_mandated_dap(hashlib.sha256(b"another").digest(), signature)
    keyset = KeySet.objects.get(purpose=KeySet.Purpose.MANDATED_DAP)
    assert keyset.kvn == dap.DAP_KVN and keyset.organization == world.agency
    entry = AuditEntry.objects.get(action="code_signing.mandated_dap_set")
    assert entry.details == {"mandated_dap": True, "fingerprint": code_signing.fingerprint(the_point)}
    code_signing.set_mandated_dap(enabled=False, actor=world.users["agency_admin"])
    assert not code_signing.mandated_dap_enabled()
    # Turning it on again keeps the same key: cards issued meanwhile hold its point.
    code_signing.set_mandated_dap(enabled=True, actor=world.users["agency_admin"])
    assert code_signing.mandated_dap_public_point() == the_point
