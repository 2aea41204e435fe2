"""The ISD diversification master is unwrapped from its KEK once per period per process
(``issuers.custody.card_keys``), never on every channel opening, and a KEK rotation or a
destroyed KEK still ends what a process keeps."""

from __future__ import annotations

from typing import Any

import pytest

from issuers import custody
from issuers.custody import card_keys
from issuers.custody_models import KeyEncryptionKey
from issuers.models import Organization

pytestmark = pytest.mark.django_db

MASTER = bytes.fromhex("8899AABBCCDDEEFF0011223344556677")
KDD = bytes(range(10))


@pytest.fixture
def agency(software_backend: str) -> Organization:
    org = Organization.objects.create(name="Cache Agency", slug="cache-agency", kind="agency")
    custody.store_master_key(org, MASTER, 0x30)
    return org


def test_the_master_is_unwrapped_once_per_period(agency: Organization, kek_unwraps: list[bytes]) -> None:
    first = custody.card_isd_keys(agency, "CIN-1", KDD)
    for _ in range(3):
        assert custody.card_isd_keys(agency, "CIN-1", KDD).enc == first.enc
    assert len(kek_unwraps) == 1
    assert "8899" not in repr(card_keys._master_keys._keys).upper()  # never in a repr (logs)


def test_the_period_ends(agency: Organization, kek_unwraps: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    custody.card_isd_keys(agency, "CIN-1", KDD)
    monkeypatch.setattr(card_keys, "MASTER_KEY_LIFETIME", 0.0)
    custody.card_isd_keys(agency, "CIN-1", KDD)
    assert len(kek_unwraps) == 2


def test_a_kek_rotation_drops_the_kept_master(
    agency: Organization, kek_unwraps: list[bytes], django_capture_on_commit_callbacks: Any
) -> None:
    before = custody.card_isd_keys(agency, "CIN-1", KDD)
    with django_capture_on_commit_callbacks(execute=True):
        new = custody.rotate_kek(agency)
    kek_unwraps.clear()
    after = custody.card_isd_keys(agency, "CIN-1", KDD)
    assert after.enc == before.enc  # the same master, now wrapped under the new KEK
    assert len(kek_unwraps) == 1 and kek_unwraps[0] != b""  # unwrapped again, under the new KEK
    assert [m.kek_id for m in card_keys._master_keys._keys.values()] == [new.pk]


def test_a_destroyed_kek_refuses_even_with_the_master_kept(agency: Organization) -> None:
    custody.card_isd_keys(agency, "CIN-1", KDD)
    KeyEncryptionKey.objects.filter(organization=agency).update(
        state=KeyEncryptionKey.State.DESTROYED, wrapped_material=b""
    )
    with pytest.raises(custody.CustodyError):
        custody.card_isd_keys(agency, "CIN-1", KDD)
    assert not card_keys._master_keys._keys
