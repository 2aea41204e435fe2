"""Primitives of gp.crypto against straightforward reference constructions."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from gp.crypto import (
    AESKey,
    DES3Key,
    aes_cmac,
    des3_expand,
    des3_mac,
    pad_m2,
    retail_mac,
    scp03_kdf,
    unpad_m2,
    xor,
)
from gp.errors import EncodingError, KeyMaterialError


def _ecb(alg: object, data: bytes, decrypt: bool = False) -> bytes:
    c = Cipher(alg, modes.ECB())  # type: ignore[arg-type]  # noqa: S305 - reference implementation
    return (c.decryptor() if decrypt else c.encryptor()).update(data)


@given(st.binary(max_size=70), st.sampled_from([8, 16]))
def test_padding_round_trip(data: bytes, block: int) -> None:
    padded = pad_m2(data, block)
    assert len(padded) % block == 0 and len(padded) > len(data)
    assert unpad_m2(padded, block) == data


@pytest.mark.parametrize("bad", ["", "00" * 16, "01" * 16, "80" + "00" * 14 + "01", "00" * 15 + "80" + "00" * 16])
def test_unpad_rejects(bad: str) -> None:
    with pytest.raises(EncodingError):
        unpad_m2(bytes.fromhex(bad))


@settings(max_examples=60)
@given(
    st.sampled_from([16, 24, 32]),
    st.lists(st.tuples(st.integers(0, 6), st.binary(min_size=16, max_size=16)), min_size=1, max_size=6),
)
def test_aes_cbc_stream_matches_fresh_contexts(klen: int, msgs: list[tuple[int, bytes]]) -> None:
    key = os.urandom(klen)
    k = AESKey(key)
    for blocks, iv in msgs:
        data = os.urandom(16 * blocks)
        ref = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor().update(data)
        assert k.cbc_encrypt(data, iv) == ref
        assert k.cbc_decrypt(ref, iv) == data
        c = cmac.CMAC(algorithms.AES(key))
        c.update(data)
        assert k.cmac(data[:5], data[5:]) == c.finalize() == aes_cmac(key, data)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 6), st.binary(min_size=8, max_size=8)), min_size=1, max_size=6))
def test_des3_cbc_stream_matches_fresh_contexts(msgs: list[tuple[int, bytes]]) -> None:
    key = os.urandom(16)
    k = DES3Key(key)
    for blocks, iv in msgs:
        data = os.urandom(8 * blocks)
        ref = Cipher(TripleDES(key + key[:8]), modes.CBC(iv)).encryptor().update(data)
        assert k.cbc_encrypt(data, iv) == ref
        assert k.cbc_decrypt(ref, iv) == data


def _ref_retail(key: bytes, data: bytes, icv: bytes) -> bytes:
    data = pad_m2(data, 8)
    h = icv
    for i in range(0, len(data), 8):
        h = _ecb(TripleDES(key[:8] * 3), xor(h, data[i : i + 8]))
    return _ecb(TripleDES(key[:8] * 3), _ecb(TripleDES(key[8:16] * 3), h, decrypt=True))


@given(st.binary(max_size=64), st.binary(min_size=8, max_size=8))
def test_retail_mac_reference(data: bytes, icv: bytes) -> None:
    key = bytes(range(16))
    assert retail_mac(key, data, icv) == _ref_retail(key, data, icv)


def test_full_3des_mac_is_last_cbc_block() -> None:
    key = os.urandom(16)
    data = os.urandom(21)
    ref = Cipher(TripleDES(key + key[:8]), modes.CBC(bytes(8))).encryptor().update(pad_m2(data, 8))[-8:]
    assert des3_mac(key, data) == ref


def test_des3_expand_and_errors() -> None:
    k = bytes(range(16))
    assert des3_expand(k) == k + k[:8]
    assert des3_expand(k + k[:8]) == k + k[:8]
    with pytest.raises(KeyMaterialError):
        des3_expand(bytes(15))
    with pytest.raises(KeyMaterialError):
        AESKey(bytes(15))
    with pytest.raises(KeyMaterialError):
        scp03_kdf(bytes(16), 4, b"", 12)
    with pytest.raises(EncodingError):
        xor(b"a", b"ab")
    with pytest.raises(EncodingError):
        AESKey(bytes(16)).cbc_encrypt(bytes(15))
