"""DAP signatures over a Load File Data Block Hash (gp.dap): the scheme banks sign and cards verify."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gp import dap
from gp.cap import LoadFile
from gp.errors import EncodingError, KeyMaterialError
from gp.keys import decode_put_key
from tests.shared_data import shared_path


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_the_lfdb_hash_is_the_one_install_for_load_carries() -> None:
    load_file = LoadFile.from_path(shared_path("testdata", "cap", "openjavacard-lib-ber.cap"))
    assert dap.lfdb_hash(load_file.load_file_data_block()) == load_file.load_file_data_block_hash("sha256")


def test_a_signature_verifies_under_its_key_and_is_plain_r_s(key: ec.EllipticCurvePrivateKey) -> None:
    digest = dap.lfdb_hash(b"\xc4\x01\x00" * 50)
    signature = dap.sign(key, digest)
    assert len(signature) == 64
    point = dap.public_point(key.public_key())
    assert dap.verify(point, digest, signature)
    # An independent check: the same bytes as a DER ECDSA-SHA256 signature over the hash.
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    key.public_key().verify(encode_dss_signature(r, s), digest, ec.ECDSA(hashes.SHA256()))


def test_a_signature_does_not_verify_for_another_hash_key_or_a_flipped_bit(key: ec.EllipticCurvePrivateKey) -> None:
    digest = dap.lfdb_hash(b"load file")
    signature = dap.sign(key, digest)
    point = dap.public_point(key.public_key())
    other = dap.public_point(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert not dap.verify(point, dap.lfdb_hash(b"load file!"), signature)
    assert not dap.verify(other, digest, signature)
    assert not dap.verify(point, digest, bytes([signature[0] ^ 1]) + signature[1:])
    assert not dap.verify(point, digest, signature[:63])
    assert not dap.verify(point, digest, bytes(64))


def test_bad_keys_and_signature_text_are_refused(key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(KeyMaterialError):
        dap.load_public_point(b"\x04" + bytes(64))
    with pytest.raises(KeyMaterialError):
        dap.sign(key, b"short")
    with pytest.raises(EncodingError):
        dap.parse_signature("zz")
    with pytest.raises(EncodingError):
        dap.parse_signature("00" * 63)
    assert dap.parse_signature("AB" * 64) == b"\xab" * 64


def test_put_key_data_installs_the_point_at_the_dap_key_version(key: ec.EllipticCurvePrivateKey) -> None:
    point = dap.public_point(key.public_key())
    decoded = decode_put_key(dap.put_key_data(point))
    assert decoded.new_version == dap.DAP_KVN
    assert point in dap.put_key_data(point)
