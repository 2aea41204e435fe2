"""KEK rotation: every key survives and still opens an SCP03 session; the old KEK is gone;
a rotation that fails midway changes nothing; the ``rotate_kek`` command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.core.management import CommandError, call_command

from audit.models import AuditEntry
from gp.keys import StaticKeys, diversify
from issuers import custody, keyvault
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.keyvault import CustodyError, KekRef
from issuers.models import Organization
from tests.issuers.conftest import run_scp03_session

pytestmark = pytest.mark.django_db

MASTER = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
KDD = bytes.fromhex("11223344556677889900")


@dataclass
class Estate:
    org: Organization
    agency: Organization
    static: dict[int, StaticKeys]  # keyset pk -> clear keys (known to the test only)
    signing: dict[int, ed25519.Ed25519PrivateKey]


@pytest.fixture
def estate(key_backend: str) -> Estate:
    agency = Organization.objects.create(name="Rot Agency", slug="rot-agency", kind="agency")
    bank = Organization.objects.create(name="Rot Bank", slug="rot-bank", kind="bank")
    static: dict[int, StaticKeys] = {}
    for n, (length, kvn) in enumerate([(16, 0x30), (24, 0x31), (32, 0x32), (16, 0x30)]):
        keyset = custody.generate_static_keys(
            bank, algorithm="aes", length=length, kvn=kvn, card_cin=f"CIN-{n}", sd_aid="A000000999015344"
        )
        static[keyset.pk] = custody.load_static_keys(keyset)
    superseded = custody.generate_static_keys(bank, kvn=0x30, card_cin="CIN-0", sd_aid="A000000999015344")
    static[superseded.pk] = custody.load_static_keys(superseded)
    signing_key = ed25519.Ed25519PrivateKey.generate()
    signing = {custody.store_private_key(bank, signing_key, purpose="checkpoint_signing", kvn=1).pk: signing_key}
    custody.store_master_key(agency, MASTER, 0x30)
    return Estate(org=bank, agency=agency, static=static, signing=signing)


def _snapshot(org: Organization) -> dict[int, tuple[int, bytes]]:
    return {k.pk: (k.kek_id, bytes(k.wrapped)) for k in KeySet.objects.filter(organization=org)}


def _all_keys_work(estate: Estate) -> None:
    for pk, keys in estate.static.items():
        keyset = KeySet.objects.get(pk=pk)
        assert custody.load_static_keys(keyset) == keys
        run_scp03_session(keys, lambda kdd, ks=keyset: custody.load_static_keys(ks))
    for pk, private in estate.signing.items():
        loaded = custody.load_private_key(KeySet.objects.get(pk=pk))
        assert isinstance(loaded, ed25519.Ed25519PrivateKey)
        private.public_key().verify(loaded.sign(b"checkpoint"), b"checkpoint")


def test_rotation_rewraps_every_key_and_old_kek_is_gone(
    estate: Estate, key_backend: str, django_capture_on_commit_callbacks: Any
) -> None:
    org = estate.org
    old_kek = custody.active_kek(org)
    assert old_kek is not None and old_kek.version == 1
    old_ref: KekRef = old_kek.ref
    old_rows = {
        k.pk: (bytes(k.wrapped), custody._aad(k, old_kek.version)) for k in KeySet.objects.filter(organization=org)
    }
    assert len(old_rows) == 6
    _all_keys_work(estate)

    with django_capture_on_commit_callbacks(execute=True):
        new_kek = custody.rotate_kek(org)

    assert new_kek.version == 2 and new_kek.state == "active" and new_kek.backend == key_backend
    old_kek.refresh_from_db()
    assert old_kek.state == "destroyed" and old_kek.destroyed_at is not None
    assert bytes(old_kek.wrapped_material or b"") == b""
    rows = KeySet.objects.filter(organization=org)
    assert {k.kek_id for k in rows} == {new_kek.pk}
    assert all(k.rewrapped_at is not None for k in rows)
    assert all(bytes(k.wrapped) != old_rows[k.pk][0] for k in rows)
    # every key still unwraps and works in an SCP03 session with the emulated card
    _all_keys_work(estate)
    # the agency's keys were not touched, and its ISD diversification still works
    agency_keys = KeySet.objects.get(organization=estate.agency)
    assert agency_keys.kek.version == 1
    run_scp03_session(
        diversify("kdf3", MASTER, KDD, 0x30), lambda kdd: custody.card_isd_keys(estate.agency, "CIN-0", kdd), kdd=KDD
    )
    # the old KEK, through the reference kept from before the rotation, unwraps nothing
    backend = keyvault.get_backend(old_ref.backend)
    for blob, aad in old_rows.values():
        with pytest.raises(CustodyError):
            backend.unwrap(old_ref, blob, aad)
    with pytest.raises(CustodyError):
        backend.wrap(old_ref, b"k" * 16, b"")
    if key_backend == "pkcs11":
        assert isinstance(backend, keyvault.Pkcs11Backend)
        labels = backend._call(lambda s: [o.label for o in s.get_objects({})])
        assert old_ref.label not in labels and new_kek.hsm_label in labels
    event = AuditEntry.objects.filter(action="custody.kek_rotated").latest("index")
    assert event.outcome == "success" and event.organization_slug == "rot-bank"
    assert event.details == {
        "old_versions": [1],
        "new_version": 2,
        "key_version": 2,
        "algorithm": "aes-256-gcm",
        "backend": key_backend,
        "key_sets_rewrapped": 6,
    }

    # and again: v3, still fine, new keys stored after rotation go under the new KEK
    with django_capture_on_commit_callbacks(execute=True):
        third = custody.rotate_kek(org)
    assert third.version == 3
    fresh = custody.generate_static_keys(org, kvn=0x40)
    assert fresh.kek_id == third.pk
    _all_keys_work(estate)


def test_reader_holding_a_pre_rotation_row_keeps_working(
    estate: Estate, django_capture_on_commit_callbacks: Any
) -> None:
    pk, keys = next(iter(estate.static.items()))
    stale = KeySet.objects.get(pk=pk)  # read before the rotation commits
    with django_capture_on_commit_callbacks(execute=True):
        custody.rotate_kek(estate.org)
    assert custody.load_static_keys(stale) == keys


def _failing_after(count: int) -> Callable[..., None]:
    original = custody._rewrap_keyset
    calls = {"n": 0}

    def rewrap(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > count:
            raise RuntimeError("injected failure in the middle of the rotation")
        original(*args, **kwargs)

    return rewrap


def test_rotation_failing_midway_changes_nothing(
    estate: Estate, key_backend: str, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    org = estate.org
    before = _snapshot(org)
    old_kek = custody.active_kek(org)
    assert old_kek is not None
    monkeypatch.setattr(custody, "_rewrap_keyset", _failing_after(3))
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError, match="injected"):
        custody.rotate_kek(org)
    monkeypatch.undo()

    assert _snapshot(org) == before
    assert list(KeyEncryptionKey.objects.filter(organization=org).values_list("version", "state")) == [(1, "active")]
    old_kek.refresh_from_db()
    assert old_kek.state == "active"
    # every key still unwraps under the old KEK and works
    backend = keyvault.get_backend(old_kek.backend)
    for keyset in KeySet.objects.filter(organization=org):
        assert backend.unwrap(old_kek.ref, bytes(keyset.wrapped), custody._aad(keyset, 1))
    _all_keys_work(estate)
    if key_backend == "pkcs11":
        assert isinstance(backend, keyvault.Pkcs11Backend)
        labels = backend._call(lambda s: [o.label for o in s.get_objects({})])
        assert f"ecard-kek-{org.pk}-2" not in labels  # the new HSM KEK was deleted on rollback
        assert old_kek.hsm_label in labels
    failure = AuditEntry.objects.filter(action="custody.kek_rotated").latest("index")
    assert failure.outcome == "failure" and "RuntimeError" in failure.reason
    # a later rotation succeeds
    with django_capture_on_commit_callbacks(execute=True):
        assert custody.rotate_kek(org).version == 2
    _all_keys_work(estate)


def test_rotate_kek_command(
    estate: Estate, capsys: pytest.CaptureFixture[str], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        call_command("rotate_kek", "rot-bank")
    out = capsys.readouterr().out
    assert "rot-bank: KEK v2" in out and "6 key set(s) re-wrapped" in out
    assert custody.active_kek(estate.org).version == 2
    assert custody.active_kek(estate.agency).version == 1

    Organization.objects.create(name="Keyless Bank", slug="keyless", kind="bank")
    with django_capture_on_commit_callbacks(execute=True):
        call_command("rotate_kek", "--all")
    out = capsys.readouterr().out
    assert "rot-agency: KEK v2" in out and "rot-bank: KEK v3" in out and "keyless" not in out
    assert "rotated 2 organisation(s)" in out
    _all_keys_work(estate)
    for secret in (MASTER, *[k.enc for k in estate.static.values()]):
        assert secret.hex() not in out.lower()

    with pytest.raises(CommandError, match="unknown organisation"):
        call_command("rotate_kek", "nope")
    with pytest.raises(CommandError):
        call_command("rotate_kek")
    with pytest.raises(CommandError):
        call_command("rotate_kek", "rot-bank", "--all")


def test_rotation_moves_an_organisation_into_the_hsm(
    software_backend: str, settings: Any, softhsm: Any, django_capture_on_commit_callbacks: Any
) -> None:
    org = Organization.objects.create(name="Mover", slug="mover", kind="bank")
    keys = StaticKeys.single(MASTER, 0x30)
    keyset = custody.store_static_keys(org, keys)
    assert keyset.kek.backend == "software"
    settings.ECARD_PKCS11_MODULE = softhsm.module
    settings.ECARD_PKCS11_TOKEN = softhsm.token_label
    settings.ECARD_PKCS11_PIN = softhsm.pin
    with django_capture_on_commit_callbacks(execute=True):
        new = custody.rotate_kek(org, backend="pkcs11")
    assert new.backend == "pkcs11"
    keyset.refresh_from_db()
    assert keyset.kek_id == new.pk and custody.load_static_keys(keyset) == keys


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_readers_keep_working_during_rotation(software_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No downtime: reader threads load keys in a loop while the KEK is rotated (slowly) three times."""
    import threading
    import time

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("concurrent readers need PostgreSQL (SQLite's shared-cache test database locks tables)")
    org = Organization.objects.create(name="Busy Bank", slug="busy-bank", kind="bank")
    expected = {}
    for n in range(5):
        keyset = custody.generate_static_keys(org, kvn=0x30, card_cin=f"CIN-{n}")
        expected[keyset.pk] = custody.load_static_keys(keyset)
    original = custody._rewrap_keyset

    def slow_rewrap(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.03)
        original(*args, **kwargs)

    monkeypatch.setattr(custody, "_rewrap_keyset", slow_rewrap)
    stop = threading.Event()
    reads: list[int] = []
    errors: list[str] = []

    def reader() -> None:
        count = 0
        try:
            while not stop.is_set():
                for pk, keys in expected.items():
                    try:
                        if custody.load_static_keys(KeySet.objects.get(pk=pk)) != keys:
                            errors.append(f"wrong keys for {pk}")
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    count += 1
        finally:
            reads.append(count)
            connections.close_all()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            custody.rotate_kek(org)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert sum(reads) > 20
    assert custody.active_kek(org).version == 4
    assert KeyEncryptionKey.objects.filter(organization=org, state="destroyed").count() == 3


def _cardsim_session(card: Any, channel_for: Callable[[bytes], Any]) -> list[Any]:
    """SELECT the ISD of an emulated card (cardsim), open the channel custody gives, GET STATUS."""
    from cardsim.constants import ISD_AID
    from gp import commands as c

    assert card.transmit(c.select(ISD_AID))[-2:] == b"\x90\x00"
    probe = channel_for(b"")  # builds INITIALIZE UPDATE (the key version is all the card needs)
    response = card.transmit(probe.initialize_update())
    assert response[-2:] == b"\x90\x00"
    channel = channel_for(response[:10])
    channel.host_challenge = probe.host_challenge
    channel.initialize_update()
    assert card.transmit(channel.external_authenticate(response))[-2:] == b"\x90\x00"
    answer = channel.unwrap(card.transmit(channel.wrap(c.get_status(0x80))))
    assert answer[-2:] == b"\x90\x00", answer[-2:].hex()
    return c.parse_get_status(answer[:-2], 0x80)


def test_rotation_then_sessions_with_emulated_cards(
    key_backend: str, tmp_path: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Two cardsim cards: one with static ISD keys held by the agency, one whose ISD keys are
    diversified from the agency's master. Both open SCP03 sessions before and after two KEK rotations."""
    pytest.importorskip("cardsim", reason="cardsim (emulated card) is part of the platform")
    from cardsim import store
    from cardsim.constants import ISD_AID
    from cardsim.state import new_state
    from cardsim.transport import InProcessCard
    from gp.scp import SCP03

    agency = Organization.objects.create(name="Sim Agency", slug="sim-agency", kind="agency")
    static_key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    store.save(tmp_path / "static.json", new_state(key=static_key, kvn=0x30, cin=bytes.fromhex("1111111111111111")))
    store.save(
        tmp_path / "div.json",
        new_state(key=MASTER, diversify_scheme="kdf3", kdd=KDD, cin=bytes.fromhex("2222222222222222")),
    )
    keyset = custody.store_static_keys(
        agency, StaticKeys.single(static_key, 0x30), card_cin="1111111111111111", sd_aid=ISD_AID.hex().upper()
    )
    custody.store_master_key(agency, MASTER, 0x30)

    def static_channel(kdd: bytes) -> Any:
        return custody.open_secure_channel(KeySet.objects.get(pk=keyset.pk), sd_aid=ISD_AID)

    def diversified_channel(kdd: bytes) -> Any:
        if not kdd:
            return SCP03(StaticKeys.single(bytes(16), 0x30), 0x33, sd_aid=ISD_AID)
        return SCP03(custody.card_isd_keys(agency, "2222222222222222", kdd), 0x33, sd_aid=ISD_AID)

    for rotation in range(3):
        for name, channel_for in (("static", static_channel), ("div", diversified_channel)):
            card = InProcessCard(tmp_path / f"{name}.json")
            entries = _cardsim_session(card, channel_for)
            assert entries and entries[0].aid == ISD_AID, (rotation, name)
        if rotation < 2:
            with django_capture_on_commit_callbacks(execute=True):
                custody.rotate_kek(agency)
    assert custody.active_kek(agency).version == 3
