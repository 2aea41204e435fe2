"""Key custody: backends, wrapping and AAD binding, stored key types, configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from audit.models import AuditEntry
from ecard.errors import ServiceError
from gp.keys import StaticKeys, diversify, kcv_aes
from issuers import custody, keyvault
from issuers.custody_models import KeyEncryptionKey, KeySet
from issuers.keyvault import CustodyError, KekUnavailableError, SoftwareBackend, UnwrapError
from issuers.models import Organization
from tests.issuers.conftest import TEST_MASTER_KEY, run_scp03_session

pytestmark = pytest.mark.django_db

KEY_A = bytes(range(0x40, 0x50))
KEY_B = bytes(range(0x50, 0x60))
KEY_C = bytes(range(0x60, 0x70))
SD_AID = "A0000009990153440001"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def orgs() -> dict[str, Organization]:
    return {
        "agency": Organization.objects.create(name="Custody Agency", slug="c-agency", kind="agency"),
        "alpha": Organization.objects.create(name="Custody Alpha", slug="c-alpha", kind="bank"),
        "beta": Organization.objects.create(name="Custody Beta", slug="c-beta", kind="bank"),
    }


# ---------------------------------------------------------------------------
# round trips on both backends


def test_static_keys_round_trip(key_backend: str, orgs: dict[str, Organization]) -> None:
    keys = StaticKeys(KEY_A, KEY_B, KEY_C, 0x30)
    keyset = custody.store_static_keys(orgs["alpha"], keys, card_cin="CIN-1", sd_aid=SD_AID.lower())
    keyset.refresh_from_db()
    assert keyset.kek.backend == key_backend
    assert keyset.sd_aid == SD_AID and keyset.kvn == 0x30 and keyset.key_length == 16
    assert keyset.kcvs == keys.kcvs("aes")
    assert custody.load_static_keys(keyset) == keys
    assert bytes(keyset.wrapped)[0] == (1 if key_backend == "software" else 2)
    run_scp03_session(keys, lambda kdd: custody.load_static_keys(KeySet.objects.get(pk=keyset.pk)))


def test_generated_keys_are_random_and_work(key_backend: str, orgs: dict[str, Organization]) -> None:
    a = custody.generate_static_keys(orgs["alpha"], algorithm="aes", length=32, kvn=0x31, card_cin="CIN-1")
    b = custody.generate_static_keys(orgs["alpha"], algorithm="aes", length=32, kvn=0x31, card_cin="CIN-2")
    assert isinstance(a, KeySet)
    ka, kb = custody.load_static_keys(a), custody.load_static_keys(b)
    assert ka.key_length == 32 and ka != kb and len({ka.enc, ka.mac, ka.dek}) == 3
    assert a.kcv_enc == kcv_aes(ka.enc).hex().upper()
    run_scp03_session(ka, lambda kdd: custody.load_static_keys(a))
    des = custody.generate_static_keys(orgs["beta"], algorithm="3des", length=16, kvn=0x20)
    assert custody.load_static_keys(des).key_length == 16 and des.algorithm == "3des"


def test_backend_level_round_trip_and_aad(key_backend: str, orgs: dict[str, Organization]) -> None:
    kek = custody.ensure_org_kek(orgs["alpha"])
    backend = keyvault.get_backend(kek.backend)
    blob = backend.wrap(kek.ref, b"secret" * 8, b"aad-1")
    assert backend.unwrap(kek.ref, blob, b"aad-1") == b"secret" * 8
    with pytest.raises(UnwrapError):
        backend.unwrap(kek.ref, blob, b"aad-2")
    other = custody.ensure_org_kek(orgs["beta"])
    with pytest.raises(UnwrapError):
        backend.unwrap(other.ref, blob, b"aad-1")
    # two wraps of the same plaintext differ (fresh nonces)
    assert backend.wrap(kek.ref, b"x" * 16, b"") != backend.wrap(kek.ref, b"x" * 16, b"")


def test_private_keys_round_trip(key_backend: str, orgs: dict[str, Organization]) -> None:
    agency = orgs["agency"]
    ec_set = custody.generate_private_key(agency, purpose="token_signing", algorithm="ec-p256", kvn=0x70)
    rsa_set = custody.generate_private_key(agency, purpose="token_signing", algorithm="rsa", kvn=0x71)
    ed_set = custody.generate_private_key(agency, purpose="checkpoint_signing", algorithm="ed25519", kvn=1)
    message = b"delegated management token"

    ec_key = custody.load_private_key(ec_set)
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    ec_pub = serialization.load_pem_public_key(ec_set.public_key.encode())
    assert isinstance(ec_pub, ec.EllipticCurvePublicKey)
    ec_pub.verify(ec_key.sign(message, ec.ECDSA(hashes.SHA256())), message, ec.ECDSA(hashes.SHA256()))

    rsa_key = custody.load_private_key(rsa_set)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_set.key_length == 256
    rsa_pub = serialization.load_pem_public_key(rsa_set.public_key.encode())
    assert isinstance(rsa_pub, rsa.RSAPublicKey)
    rsa_pub.verify(
        rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA256()), message, padding.PKCS1v15(), hashes.SHA256()
    )

    ed_key = custody.load_private_key(ed_set)
    assert isinstance(ed_key, ed25519.Ed25519PrivateKey)
    ed_pub = serialization.load_pem_public_key(ed_set.public_key.encode())
    assert isinstance(ed_pub, ed25519.Ed25519PublicKey)
    ed_pub.verify(ed_key.sign(message), message)

    # store_private_key with a caller's key
    mine = ec.generate_private_key(ec.SECP256R1())
    stored = custody.store_private_key(orgs["alpha"], mine, purpose="receipt", kvn=0x01)
    assert custody.load_private_key(stored).private_numbers() == mine.private_numbers()


def test_card_isd_keys_are_diversified_on_demand(key_backend: str, orgs: dict[str, Organization]) -> None:
    agency = orgs["agency"]
    master = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
    master_set = custody.store_master_key(agency, master, 0x30)
    assert master_set.purpose == "diversification_master" and master_set.kcv_enc == kcv_aes(master).hex().upper()
    kdd = bytes.fromhex("00010203040506070809")
    card_keys = diversify("kdf3", master, kdd, 0x30)
    before = KeySet.objects.count()
    run_scp03_session(card_keys, lambda seen: custody.card_isd_keys(agency, "CIN-9", seen), kdd=kdd)
    assert KeySet.objects.count() == before  # diversified keys are never stored
    des_master = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
    custody.store_master_key(agency, des_master, 0x20, algorithm="3des")
    assert custody.card_isd_keys(agency, "CIN-9", kdd, "emv") == diversify("emv", des_master, kdd, 0x20)
    assert custody.card_isd_keys(agency, "CIN-9", kdd, "visa2") == diversify("visa2", des_master, kdd, 0x20)
    with pytest.raises(ServiceError):
        custody.card_isd_keys(orgs["alpha"], "CIN-9", kdd)


# ---------------------------------------------------------------------------
# binding, tampering, wrong master key


def _copy_blob(source: KeySet, target: KeySet) -> KeySet:
    KeySet.objects.filter(pk=target.pk).update(wrapped=bytes(source.wrapped))
    return KeySet.objects.get(pk=target.pk)


def test_blob_copied_to_another_row_does_not_unwrap(key_backend: str, orgs: dict[str, Organization]) -> None:
    alpha, beta = orgs["alpha"], orgs["beta"]
    keys = StaticKeys(KEY_A, KEY_B, KEY_C, 0x30)
    source = custody.store_static_keys(alpha, keys, card_cin="CIN-1", sd_aid=SD_AID)
    targets = {
        "other card": custody.store_static_keys(alpha, keys, card_cin="CIN-2", sd_aid=SD_AID),
        "other kvn": custody.store_static_keys(
            alpha, StaticKeys(KEY_A, KEY_B, KEY_C, 0x31), card_cin="CIN-1", sd_aid=SD_AID
        ),
        "other SD": custody.store_static_keys(alpha, keys, card_cin="CIN-1", sd_aid="A0000009990153440002"),
        "other org": custody.store_static_keys(beta, keys, card_cin="CIN-1", sd_aid=SD_AID),
        "other purpose": custody.store_static_keys(alpha, keys, card_cin="CIN-1", sd_aid=SD_AID, purpose="receipt"),
    }
    for name, target in targets.items():
        assert custody.load_static_keys(target) == StaticKeys(KEY_A, KEY_B, KEY_C, target.kvn), name
        copied = _copy_blob(source, target)
        with pytest.raises(UnwrapError):
            custody.load_static_keys(copied)
    # the same blob under a row whose metadata was edited (e.g. KVN changed in the admin)
    KeySet.objects.filter(pk=source.pk).update(kvn=0x32)
    with pytest.raises(UnwrapError):
        custody.load_static_keys(KeySet.objects.get(pk=source.pk))


def test_tampered_blob_fails(key_backend: str, orgs: dict[str, Organization]) -> None:
    keyset = custody.store_static_keys(orgs["alpha"], StaticKeys(KEY_A, KEY_B, KEY_C, 0x30))
    blob = bytes(keyset.wrapped)
    for position in (0, 1, 12, 13, len(blob) // 2, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        keyset.wrapped = bytes(tampered)
        with pytest.raises(CustodyError):
            custody.load_static_keys(keyset)
    for cut in (blob[:-1], blob[:20], b""):
        keyset.wrapped = cut
        with pytest.raises(CustodyError):
            custody.load_static_keys(keyset)
    keyset.wrapped = blob
    assert custody.load_static_keys(keyset).enc == KEY_A


def test_wrong_master_key_fails(software_backend: str, settings: Any, orgs: dict[str, Organization]) -> None:
    keyset = custody.store_static_keys(orgs["alpha"], StaticKeys(KEY_A, KEY_B, KEY_C, 0x30))
    other = SoftwareBackend(os.urandom(32), previous_master_keys=())
    aad = custody._aad(keyset, keyset.kek.version)
    with pytest.raises(UnwrapError):
        other.unwrap(keyset.kek.ref, bytes(keyset.wrapped), aad)
    settings.ECARD_MASTER_KEY = os.urandom(32).hex()  # resets the cached backend
    with pytest.raises(UnwrapError) as excinfo:
        custody.load_static_keys(KeySet.objects.get(pk=keyset.pk))
    assert KEY_A.hex() not in str(excinfo.value).lower()
    # a previous master key still opens KEKs created under it
    settings.ECARD_MASTER_KEY_PREVIOUS = TEST_MASTER_KEY.hex()
    assert custody.load_static_keys(KeySet.objects.get(pk=keyset.pk)).enc == KEY_A


# ---------------------------------------------------------------------------
# service behaviour


def test_store_supersedes_and_audits(software_backend: str, orgs: dict[str, Organization]) -> None:
    alpha = orgs["alpha"]
    first = custody.store_static_keys(alpha, StaticKeys(KEY_A, KEY_B, KEY_C, 0x30), card_cin="CIN-1")
    second = custody.store_static_keys(alpha, StaticKeys(KEY_C, KEY_B, KEY_A, 0x30), card_cin="CIN-1")
    first.refresh_from_db()
    assert first.state == "superseded" and first.rotated_at is not None
    assert second.state == "active"
    assert KeyEncryptionKey.objects.filter(organization=alpha).count() == 1
    events = list(AuditEntry.objects.filter(organization_slug="c-alpha").order_by("index"))
    assert [e.action for e in events] == ["custody.kek_created", "custody.key_stored", "custody.key_stored"]
    assert events[-1].details["superseded"] == [first.pk]
    assert events[-1].card_cin == "CIN-1" and events[-1].details["kvn"] == 0x30
    assert custody.ensure_org_kek(alpha).pk == second.kek_id


def test_validation(software_backend: str, orgs: dict[str, Organization]) -> None:
    alpha = orgs["alpha"]
    with pytest.raises(ServiceError):
        custody.generate_static_keys(alpha, algorithm="3des", length=32, kvn=1)
    with pytest.raises(ServiceError):
        custody.generate_static_keys(alpha, algorithm="aes", length=16, kvn=0x100)
    with pytest.raises(ServiceError):
        custody.store_static_keys(alpha, StaticKeys(KEY_A, KEY_B, KEY_C, 1), sd_aid="XYZ")
    with pytest.raises(ServiceError):
        custody.store_private_key(alpha, ed25519.Ed25519PrivateKey.generate(), purpose="token_signing", kvn=1)
    with pytest.raises(ServiceError):
        custody.store_private_key(alpha, ec.generate_private_key(ec.SECP384R1()), kvn=1)
    static = custody.generate_static_keys(alpha, kvn=1)
    with pytest.raises(CustodyError):
        custody.load_private_key(static)
    with pytest.raises(CustodyError):
        custody.load_secret_key(static)


def test_repr_and_str_hide_keys(key_backend: str, orgs: dict[str, Organization]) -> None:
    keys = StaticKeys(KEY_A, KEY_B, KEY_C, 0x30)
    keyset = custody.store_static_keys(orgs["alpha"], keys, card_cin="CIN-1", sd_aid=SD_AID)
    private = ed25519.Ed25519PrivateKey.generate()
    signing = custody.store_private_key(orgs["alpha"], private, purpose="checkpoint_signing", kvn=1)
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    kek = keyset.kek
    texts = [
        repr(keyset),
        str(keyset),
        repr(signing),
        str(signing),
        repr(keys),
        str(keys),
        repr(custody.load_static_keys(keyset)),
        repr(kek),
        str(kek),
        repr(kek.ref),
        repr(keyvault.get_backend(kek.backend)),
    ]
    secrets_ = [KEY_A, KEY_B, KEY_C, raw_private, bytes(keyset.wrapped), bytes(kek.wrapped_material or b"x" * 16)]
    for text in texts:
        for secret in secrets_:
            assert secret.hex() not in text.lower(), text
            assert repr(secret) not in text, text
    assert "0x30" in repr(keys) and "scp_static" in str(keyset)


# ---------------------------------------------------------------------------
# configuration


def test_master_key_parsing() -> None:
    key = bytes(range(32))
    import base64

    assert keyvault.parse_master_key(key.hex()) == key
    assert keyvault.parse_master_key(key.hex().upper()) == key
    assert keyvault.parse_master_key(base64.b64encode(key).decode()) == key
    assert keyvault.parse_master_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key
    for bad in ("", "00" * 16, "zz" * 32, base64.b64encode(bytes(31)).decode()):
        with pytest.raises(ImproperlyConfigured):
            keyvault.parse_master_key(bad)


def test_no_public_development_master_key(settings: Any) -> None:
    """Without ECARD_MASTER_KEY the backend refuses, DEBUG or not: there is no fixed key in the
    source to fall back on (the embedded default generates one per installation)."""
    settings.ECARD_MASTER_KEY = ""
    for debug in (False, True):
        settings.DEBUG = debug
        with pytest.raises(ImproperlyConfigured, match="ECARD_MASTER_KEY"):
            SoftwareBackend(previous_master_keys=())


def test_settings_refuse_missing_master_key_without_debug() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECARD_")}
    env.update({"DEBUG": "0", "SECRET_KEY": "x" * 50, "DJANGO_SETTINGS_MODULE": "ecard.settings"})
    code = "import django\ntry:\n    django.setup()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert "ImproperlyConfigured" in out.stdout and "ECARD_MASTER_KEY" in out.stdout, out.stdout + out.stderr
    env["ECARD_KEY_BACKEND"] = "pkcs11"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert "ECARD_PKCS11_MODULE" in out.stdout, out.stdout + out.stderr


def test_pkcs11_kek_is_a_non_extractable_token_key(pkcs11_backend: str, orgs: dict[str, Organization]) -> None:
    from pkcs11 import Attribute

    kek = custody.ensure_org_kek(orgs["alpha"])
    assert kek.backend == "pkcs11" and kek.hsm_label == f"ecard-kek-{orgs['alpha'].pk}-1"
    assert bytes(kek.wrapped_material or b"") == b""
    backend = keyvault.get_backend("pkcs11")
    assert isinstance(backend, keyvault.Pkcs11Backend)
    obj = backend._call(lambda session: backend._find(session, kek.ref))
    assert obj[Attribute.TOKEN] and obj[Attribute.SENSITIVE] and obj[Attribute.PRIVATE]
    assert not obj[Attribute.EXTRACTABLE]
    assert obj[Attribute.VALUE_LEN] == 32
    backend.destroy(kek.ref)
    with pytest.raises(KekUnavailableError):
        backend.wrap(kek.ref, b"x" * 16, b"")
    assert django_settings.ECARD_KEY_BACKEND == "pkcs11"


# ---------------------------------------------------------------------------
# secure channels keyed from custody; sealed channel state


def _handshake(host: Any, card: Any) -> None:
    response = card.initialize_update(host.initialize_update())
    assert response[-2:] == b"\x90\x00"
    assert card.external_authenticate(host.external_authenticate(response)) == b"\x90\x00"
    plain = bytes.fromhex("80CA00660100")
    assert card.unwrap_command(host.wrap(plain))[1:4] == plain[1:4]
    answer = bytes.fromhex("66039F7F009000")
    assert host.unwrap(card.wrap_response(answer)) == answer


def test_open_secure_channel_scp03_and_scp02(key_backend: str, orgs: dict[str, Organization]) -> None:
    from gp.scp import SCP02, SCP03
    from gp.scp_card import CardSCP02, CardSCP03

    aes = StaticKeys(KEY_A, KEY_B, KEY_C, 0x30)
    aes_set = custody.store_static_keys(orgs["alpha"], aes, card_cin="CIN-1", sd_aid=SD_AID)
    host = custody.open_secure_channel(aes_set)
    assert isinstance(host, SCP03) and host.security_level == 0x33
    _handshake(host, CardSCP03(aes, i=0x70))
    des = StaticKeys(KEY_A, KEY_B, KEY_C, 0x20)
    des_set = custody.store_static_keys(orgs["alpha"], des, card_cin="CIN-1", algorithm="3des")
    host2 = custody.open_secure_channel(des_set, security_level=0x03)
    assert isinstance(host2, SCP02)
    _handshake(host2, CardSCP02(des, i=0x55))
    for text in (repr(host), repr(host2)):
        assert KEY_A.hex() not in text.lower()


def test_sealed_channel_state(
    key_backend: str, orgs: dict[str, Organization], django_capture_on_commit_callbacks: Any
) -> None:
    from gp.scp import SCP03
    from gp.scp_card import CardSCP03

    alpha = orgs["alpha"]
    keys = StaticKeys(KEY_A, KEY_B, KEY_C, 0x30)
    keyset = custody.store_static_keys(alpha, keys)
    host, card = custody.open_secure_channel(keyset), CardSCP03(keys, i=0x70)
    response = card.initialize_update(host.initialize_update())
    assert card.external_authenticate(host.external_authenticate(response)) == b"\x90\x00"
    state = host.session_state()
    sealed = custody.seal_channel_state(alpha, state, context="job-1")
    for value in state.values():
        if isinstance(value, str) and len(value) >= 32:
            assert value.encode() not in sealed and bytes.fromhex(value) not in sealed
    assert custody.open_channel_state(alpha, sealed, context="job-1") == state
    resumed = SCP03.from_session_state(None, custody.open_channel_state(alpha, sealed, context="job-1"))
    plain = bytes.fromhex("80CA00660100")
    assert card.unwrap_command(resumed.wrap(plain))[1:4] == plain[1:4]
    with pytest.raises(UnwrapError):
        custody.open_channel_state(alpha, sealed, context="job-2")
    with pytest.raises(CustodyError):
        custody.open_channel_state(orgs["beta"], sealed, context="job-1")
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(UnwrapError):
        custody.open_channel_state(alpha, bytes(tampered), context="job-1")
    with django_capture_on_commit_callbacks(execute=True):
        custody.rotate_kek(alpha)
    with pytest.raises(KekUnavailableError):  # sessions restart after a KEK rotation
        custody.open_channel_state(alpha, sealed, context="job-1")
    resealed = custody.seal_channel_state(alpha, state, context="j")
    assert custody.open_channel_state(alpha, resealed, context="j") == state


# ---------------------------------------------------------------------------
# properties

_fields = st.lists(st.one_of(st.text(max_size=12), st.integers(min_value=0, max_value=10**6)), max_size=6)


@given(a=_fields, b=_fields)
@hypothesis_settings(max_examples=300, deadline=None)
def test_aad_encoding_is_injective(a: list[str | int], b: list[str | int]) -> None:
    def norm(fields: list[str | int]) -> list[str]:
        return [str(f) for f in fields]  # ints are encoded as their decimal text

    if norm(a) != norm(b):
        assert keyvault.encode_aad(*a) != keyvault.encode_aad(*b)


@given(plaintext=st.binary(min_size=1, max_size=300), aad=st.binary(max_size=64), flip=st.integers(min_value=0))
@hypothesis_settings(max_examples=60, deadline=None)
def test_software_wrap_round_trip_and_any_bit_flip_fails(plaintext: bytes, aad: bytes, flip: int) -> None:
    material: dict[int, bytes] = {}
    backend = SoftwareBackend(
        bytes(range(32)), previous_master_keys=(), material_source=lambda ref: material[ref.version]
    )
    ref = backend.create_kek(7, 1)
    material[1] = ref.material
    blob = backend.wrap(ref, plaintext, aad)
    assert backend.unwrap(ref, blob, aad) == plaintext
    bit = flip % (len(blob) * 8)
    tampered = bytearray(blob)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(UnwrapError):
        backend.unwrap(ref, bytes(tampered), aad)
