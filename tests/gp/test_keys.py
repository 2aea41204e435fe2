"""Static keys, KCVs, diversification and PUT KEY key data."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gp.crypto import AESKey, DES3Key
from gp.errors import EncodingError, GPError, KeyMaterialError
from gp.keys import (
    KEY_TYPE_EC_PARAM_REF,
    KEY_TYPE_EC_PUBLIC,
    KEY_TYPE_RSA_E,
    KEY_TYPE_RSA_N,
    StaticKeys,
    decode_put_key,
    diversify,
    encode_put_key_ec_p256,
    encode_put_key_rsa,
    encode_put_key_symmetric,
    kcv_aes,
    kcv_des,
    scp02_decrypt_key,
    scp03_decrypt_key,
)
from gp.scp import SCP02, SCP03, SCP02SessionKeys, scp02_session_keys
from gp.scp_card import CardSCP02, CardSCP03

GP_KEY = bytes.fromhex("404142434445464748494A4B4C4D4E4F")


def test_kcvs_default_key() -> None:
    assert kcv_des(GP_KEY).hex().upper() == "8BAF47"
    assert kcv_aes(GP_KEY).hex().upper() == "504A77"


@pytest.mark.parametrize("length", [0, 8, 15, 17, 33])
def test_static_keys_reject_bad_lengths(length: int) -> None:
    with pytest.raises(KeyMaterialError):
        StaticKeys(bytes(length), bytes(length), bytes(length))


def test_static_keys_reject_mixed_lengths_and_version() -> None:
    with pytest.raises(KeyMaterialError):
        StaticKeys(bytes(16), bytes(32), bytes(16))
    with pytest.raises(KeyMaterialError):
        StaticKeys(bytes(16), bytes(16), bytes(16), version=256)
    with pytest.raises(KeyMaterialError):
        StaticKeys("00" * 16, bytes(16), bytes(16))  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [16, 24, 32])
def test_repr_hides_key_material(length: int) -> None:
    key = os.urandom(length)
    k = StaticKeys(key, key, key, 0x31)
    texts = [repr(k), str(k), repr(AESKey(key)), repr([k])]
    if length == 16:
        texts += [repr(DES3Key(key)), repr(scp02_session_keys(k, b"\x00\x01"))]
        ch2 = SCP02(k, 0x03)
        card2 = CardSCP02(k)
        ch2.external_authenticate(card2.initialize_update(ch2.initialize_update()))
        texts += [repr(ch2), repr(ch2._core), repr(card2)]
    ch = SCP03(k, 0x33)
    card = CardSCP03(k)
    ch.external_authenticate(card.initialize_update(ch.initialize_update()))
    texts += [repr(ch), repr(ch._core), repr(card)]
    for text in texts:
        assert key.hex() not in text.lower(), text
        assert key.hex().upper() not in text, text
        assert repr(key) not in text
    assert "0x31" in repr(k)
    if length == 16:
        assert isinstance(scp02_session_keys(k, b"\x00\x00"), SCP02SessionKeys)


def test_kcvs_method() -> None:
    k = StaticKeys.single(GP_KEY)
    assert k.kcvs("aes") == {"enc": "504A77", "mac": "504A77", "dek": "504A77"}
    assert k.kcvs("des")["dek"] == "8BAF47"


def test_diversify_errors_and_versions() -> None:
    kdd = bytes(range(10))
    with pytest.raises(KeyMaterialError):
        diversify("nope", GP_KEY, kdd)
    with pytest.raises(KeyMaterialError):
        diversify("emv", GP_KEY, kdd[:9])
    with pytest.raises(KeyMaterialError):
        diversify("visa2", bytes(32), kdd)
    assert diversify("emv", GP_KEY, kdd).version == 0x20
    assert diversify("kdf3", GP_KEY, kdd).version == 0x30
    assert diversify("KDF3", GP_KEY, kdd, version=0x3F).version == 0x3F
    assert len(diversify("kdf3", bytes(32), kdd).enc) == 32


# --- PUT KEY ----------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([16, 24, 32]), st.integers(1, 0x7F))
def test_put_key_aes_round_trip(length: int, kvn: int) -> None:
    dek = os.urandom(16)
    new = StaticKeys(os.urandom(length), os.urandom(length), os.urandom(length), kvn)
    data = encode_put_key_symmetric(kvn, new, lambda k: scp03_encrypt(dek, k), algorithm="aes")
    assert data[0] == kvn and data[1] == 0x88 and data[3] == length
    for key in (new.enc, new.mac, new.dek):
        assert key not in data
    decoded = decode_put_key(data, lambda e, n: scp03_decrypt_key(dek, e, n))
    assert decoded.static_keys() == new
    assert [c.kcv for c in decoded.components] == [kcv_aes(k) for k in (new.enc, new.mac, new.dek)]
    assert new.enc.hex() not in repr(decoded).lower()


def scp03_encrypt(dek: bytes, key: bytes) -> bytes:
    from gp.keys import scp03_encrypt_key

    return scp03_encrypt_key(dek, key)


def test_put_key_scp03_through_channel() -> None:
    static = StaticKeys.single(os.urandom(16))
    host = SCP03(static, 0x33)
    card = CardSCP03(static)
    card.external_authenticate(host.external_authenticate(card.initialize_update(host.initialize_update())))
    new = StaticKeys(os.urandom(16), os.urandom(16), os.urandom(16), 0x31)
    data = encode_put_key_symmetric(0x31, new, host.encrypt_key, algorithm="aes")
    from gp.apdu import CommandAPDU

    capdu = CommandAPDU(0x80, 0xD8, 0x30, 0x81, data, le=256).to_bytes()
    plain = CommandAPDU.from_bytes(card.unwrap_command(host.wrap(capdu)))
    decoded = decode_put_key(plain.data, lambda e, n: scp03_decrypt_key(static.dek, e, n))
    assert decoded.new_version == 0x31 and decoded.static_keys() == new
    assert card.decode_put_key(plain.data) == decoded


def test_put_key_scp02_through_channel() -> None:
    static = StaticKeys.single(GP_KEY, 0x20)
    host = SCP02(static, 0x03)
    card = CardSCP02(static)
    card.external_authenticate(host.external_authenticate(card.initialize_update(host.initialize_update())))
    new = StaticKeys(os.urandom(16), os.urandom(16), os.urandom(16), 0x21)
    data = encode_put_key_symmetric(0x21, new, host.encrypt_key, algorithm="des")
    assert len(data) == 1 + 3 * (2 + 16 + 1 + 3)
    assert data[1:3] == b"\x80\x10"
    decoded = decode_put_key(data, lambda e, n: scp02_decrypt_key(card.session_dek, e))
    assert decoded.static_keys() == new
    assert decoded.components[0].kcv == kcv_des(new.enc)
    assert card.decode_put_key(data).static_keys() == new


def test_put_key_kcv_mismatch_and_truncation() -> None:
    dek = os.urandom(16)
    new = StaticKeys.single(os.urandom(16))
    data = bytearray(encode_put_key_symmetric(0x31, new, lambda k: scp03_encrypt(dek, k), algorithm="aes"))
    bad = bytearray(data)
    bad[-1] ^= 0x01
    with pytest.raises(KeyMaterialError):
        decode_put_key(bytes(bad), lambda e, n: scp03_decrypt_key(dek, e, n))
    with pytest.raises(KeyMaterialError):  # wrong DEK: KCVs do not match
        decode_put_key(bytes(data), lambda e, n: scp03_decrypt_key(os.urandom(16), e, n))
    for cut in (0, 1, 3, 20, len(data) - 1):
        with pytest.raises(GPError):
            decode_put_key(bytes(data[:cut]), lambda e, n: scp03_decrypt_key(dek, e, n))
    with pytest.raises(KeyMaterialError):
        decode_put_key(bytes(data))  # no DEK given
    with pytest.raises(KeyMaterialError):
        encode_put_key_symmetric(0x21, [bytes(24)], lambda k: k, algorithm="des")


def test_put_key_rsa() -> None:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    nums = priv.public_key().public_numbers()
    n = nums.n.to_bytes(256, "big")
    e = nums.e.to_bytes(3, "big")
    data = encode_put_key_rsa(0x70, n, e)
    assert data[:4] == bytes((0x70, 0xA1, 0x82, 0x01))  # 256-byte modulus: 3-byte length
    decoded = decode_put_key(data)
    assert decoded.new_version == 0x70
    assert [(c.key_type, c.value) for c in decoded.components] == [(KEY_TYPE_RSA_N, n), (KEY_TYPE_RSA_E, e)]
    small = decode_put_key(encode_put_key_rsa(0x71, n[:100], e))
    assert small.components[0].value == n[:100]


def test_put_key_ec_p256() -> None:
    from cryptography.hazmat.primitives import serialization

    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    data = encode_put_key_ec_p256(0x70, point)
    assert data[1] == 0xB0 and data[2] == 65
    assert data.endswith(bytes((0xF0, 0x01, 0x00, 0x00)))
    decoded = decode_put_key(data)
    assert decoded.components[0].key_type == KEY_TYPE_EC_PUBLIC and decoded.components[0].value == point
    assert decoded.components[1].key_type == KEY_TYPE_EC_PARAM_REF and decoded.components[1].value == b"\x00"
    with pytest.raises(KeyMaterialError):
        encode_put_key_ec_p256(0x70, point[1:])


def test_decode_rejects_bad_lengths() -> None:
    with pytest.raises(EncodingError):
        decode_put_key(b"")
    with pytest.raises(EncodingError):
        decode_put_key(bytes((0x70, 0xA1, 0x83, 0x00)))
