"""The stages over the engine, phase by phase, without a database: the script each computes from
a registry the card proved, and what its verification of the next registry records (effects) or
refuses. Records are in-memory model instances; pytest-django refuses any query (no django_db)."""

from __future__ import annotations

from typing import Any

import pytest

from cards.models import Card, CardJob, SecurityDomain
from gp.apdu import SW
from gp.commands import RegistryEntry
from issuers.models import Organization
from updates import ota
from updates.engine.effects import PackagesGone, SdKeyVersion, SdLifecycle, sd_lifecycle
from updates.engine.protocol import (
    STATUS_APPS,
    STATUS_ELF_MODULES,
    KeyChoice,
    NeedsProof,
    Registry,
    StepFailed,
    Unconfirmed,
)
from updates.plans import SsdRemovePackages

SSD = "A000000888025344"
PKG = "A0000008880201"
INS_DELETE, INS_INSTALL, INS_SET_STATUS = 0xE4, 0xE6, 0xF0
PERSONALIZED, LOCKED = 0x0F, 0x8F


def job(kind: str, *, params: dict[str, Any] | None = None, key_kvn: int | None = 0x31) -> CardJob:
    agency = Organization(pk=1, name="Agency", slug="agency", kind="agency")
    bank = Organization(pk=2, name="Beta Bank", slug="beta", kind="bank")
    card = Card(pk=3, cin="0011223344556677", serial="S1", issued_by=agency)
    sd = SecurityDomain(
        pk=5, card=card, organization=bank, aid=SSD, privileges="808000", management="am", key_kvn=key_kvn
    )
    return CardJob(pk=9, card=card, kind=kind, organization=bank, security_domain=sd, params=params or {})


def listed(*apps: tuple[str, int], elfs: tuple[str, ...] = (), proven: tuple[int, ...] = (STATUS_APPS,)) -> Registry:
    return Registry(
        apps=[RegistryEntry(bytes.fromhex(aid), lc) for aid, lc in apps],
        elfs=[RegistryEntry(bytes.fromhex(aid), 0x01) for aid in elfs],
        proven_listings=frozenset(proven),
    )


ISD_KEY = KeyChoice("isd", 0x30)


# ---------------------------------------------------------------- install the SSD (ISD)


def test_install_ssd_scripts_only_what_the_card_lacks() -> None:
    stage = ota.IsdInstallSsd(job(CardJob.Kind.ENROLL_BANK))
    [install] = stage.script(listed(), None)  # type: ignore[arg-type]  # no channel needed
    assert install.apdu[1] == INS_INSTALL and bytes.fromhex(SSD) in install.apdu and install.expect == (SW.SUCCESS,)
    assert stage.script(listed((SSD, PERSONALIZED)), None) == []  # type: ignore[arg-type]


def test_install_ssd_records_the_listed_life_cycle_or_is_tried_again() -> None:
    stage = ota.IsdInstallSsd(job(CardJob.Kind.ENROLL_BANK))
    assert stage.finish(listed((SSD, PERSONALIZED)), ISD_KEY) == [SdLifecycle(5, "PERSONALIZED")]
    with pytest.raises(StepFailed, match="does not list"):
        stage.finish(listed(), ISD_KEY)


# ---------------------------------------------------------------- lock / unlock (ISD)


@pytest.mark.parametrize(
    ("kind", "before", "p2"), [(CardJob.Kind.LOCK_SD, PERSONALIZED, 0x80), (CardJob.Kind.UNLOCK_SD, LOCKED, 0x00)]
)
def test_set_status_scripts_the_change_once(kind: str, before: int, p2: int) -> None:
    stage = ota.IsdSetStatus(job(kind))
    [command] = stage.script(listed((SSD, before)), None)  # type: ignore[arg-type]
    assert command.apdu[1:4] == bytes((INS_SET_STATUS, 0x60, p2))  # §11.10.2: P1 60 the SD and its applications
    after = LOCKED if before == PERSONALIZED else PERSONALIZED
    assert stage.script(listed((SSD, after)), None) == []  # type: ignore[arg-type]
    with pytest.raises(StepFailed, match="not on the card"):
        stage.script(listed(), None)  # type: ignore[arg-type]


def test_set_status_records_only_the_listed_state() -> None:
    lock = ota.IsdSetStatus(job(CardJob.Kind.LOCK_SD))
    assert lock.finish(listed((SSD, LOCKED)), ISD_KEY) == [SdLifecycle(5, "LOCKED")]
    with pytest.raises(StepFailed, match="new lock state"):
        lock.finish(listed((SSD, PERSONALIZED)), ISD_KEY)
    unlock = ota.IsdSetStatus(job(CardJob.Kind.UNLOCK_SD))
    assert unlock.finish(listed((SSD, PERSONALIZED)), ISD_KEY) == [SdLifecycle(5, "PERSONALIZED")]
    with pytest.raises(StepFailed):
        unlock.finish(listed(), ISD_KEY)


# ---------------------------------------------------------------- delete the SSD (ISD)


def test_delete_ssd_accepts_6a88_only_where_absence_is_unproven() -> None:
    stage = ota.IsdDeleteSsd(job(CardJob.Kind.REMOVE_BANK))
    [present] = stage.script(listed((SSD, PERSONALIZED)), None)  # type: ignore[arg-type]
    assert present.apdu[1] == INS_DELETE and present.expect == (SW.SUCCESS,) and present.proves == f"deleted:{SSD}"
    [unproven] = stage.script(listed(proven=()), None)  # type: ignore[arg-type]  # a bare 6A88 listing
    assert unproven.expect == (SW.SUCCESS, SW.REFERENCED_DATA_NOT_FOUND)
    assert stage.script(listed(), None) == []  # type: ignore[arg-type]  # a complete R-MAC'd listing without it


def test_delete_ssd_is_done_only_on_proof_and_asks_for_a_probe_otherwise() -> None:
    stage = ota.IsdDeleteSsd(job(CardJob.Kind.REMOVE_BANK))
    assert stage.finish(listed(), ISD_KEY) == []
    assert stage.finish(Registry(proofs=frozenset({f"deleted:{SSD}"})), ISD_KEY) == []
    with pytest.raises(StepFailed, match="still on the card"):
        stage.finish(listed((SSD, PERSONALIZED)), ISD_KEY)
    with pytest.raises(NeedsProof) as need:
        stage.finish(listed(proven=()), ISD_KEY)
    probe, delete = need.value.commands
    assert probe.apdu[1] == INS_INSTALL and probe.proves == f"free:{SSD}"
    assert delete.apdu[1] == INS_DELETE and delete.expect == (SW.SUCCESS,)


# ---------------------------------------------------------------- keys (SSD)


def test_bank_keys_put_nothing_when_the_bank_keys_opened_and_record_the_new_version() -> None:
    stage = ota.SsdBankKeys(job(CardJob.Kind.ENROLL_BANK, key_kvn=None))
    stage.opened_with = KeyChoice("keyset", 0x31, 1)
    assert stage.script(listed(), None) == []  # type: ignore[arg-type]
    assert stage.finish(listed(), stage.opened_with) == [SdKeyVersion(5, 0x31)]


def test_rotation_records_the_new_version_and_retires_the_old() -> None:
    stage = ota.SsdRotateKeys(job(CardJob.Kind.ROTATE_KEYS, params={"from_kvn": 0x31, "to_kvn": 0x32}))
    stage.opened_with = KeyChoice("keyset", 0x32, 2)
    assert stage.script(listed(), None) == []  # type: ignore[arg-type]  # the new keys opened: PUT KEY happened
    assert stage.finish(listed(), stage.opened_with) == [SdKeyVersion(5, 0x32, supersedes=0x31)]
    fresh = ota.SsdRotateKeys(job(CardJob.Kind.ROTATE_KEYS, params={"from_kvn": 0x32, "to_kvn": 0x32}, key_kvn=0x32))
    assert fresh.finish(listed(), stage.opened_with) == [SdKeyVersion(5, 0x32)]


# ---------------------------------------------------------------- remove packages (SSD)


def test_remove_packages_deletes_what_is_not_proven_absent() -> None:
    stage = SsdRemovePackages(job(CardJob.Kind.UPDATE_APPLET, params={"remove": [PKG]}))
    [listed_delete] = stage.script(listed(elfs=(PKG,), proven=(STATUS_ELF_MODULES,)), None)
    assert listed_delete.expect == (SW.SUCCESS,)
    [unproven] = stage.script(listed(proven=()), None)
    assert unproven.expect == (SW.SUCCESS, SW.REFERENCED_DATA_NOT_FOUND)
    assert stage.script(listed(proven=(STATUS_ELF_MODULES,)), None) == []


def test_remove_packages_records_only_a_proven_absence() -> None:
    stage = SsdRemovePackages(job(CardJob.Kind.UPDATE_APPLET, params={"remove": [PKG]}))
    key = KeyChoice("keyset", 0x31, 1)
    assert stage.finish(listed(proven=(STATUS_ELF_MODULES,)), key) == [PackagesGone(5, (PKG,))]
    assert stage.finish(Registry(proofs=frozenset({f"deleted:{PKG}"})), key) == [PackagesGone(5, (PKG,))]
    with pytest.raises(StepFailed, match="still on the card"):
        stage.finish(listed(elfs=(PKG,), proven=(STATUS_ELF_MODULES,)), key)
    with pytest.raises(Unconfirmed):
        stage.finish(listed(proven=()), key)


@pytest.mark.parametrize(
    ("byte", "name"),
    [(0x03, "INSTALLED"), (0x07, "SELECTABLE"), (0x0F, "PERSONALIZED"), (0x8F, "LOCKED"), (0x83, "LOCKED")],
)
def test_sd_life_cycle_bytes(byte: int, name: str) -> None:
    assert sd_lifecycle(byte) == name
    assert name in SecurityDomain.Lifecycle.values
