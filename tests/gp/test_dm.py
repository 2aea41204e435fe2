"""Delegated Management tokens and receipts (gp.dm)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from gp import commands as c
from gp import dm
from gp.aids import ISD_AID
from gp.apdu import CommandAPDU
from gp.errors import DelegatedManagementError, GPError

ISD = ISD_AID
SSD = bytes.fromhex("A00000015153504101")
PKG = bytes.fromhex("0102030405")
APP = bytes.fromhex("0102030405060708")
HASH = bytes(range(32))


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_load_token_data_layout() -> None:
    data = dm.load_token_data(PKG, SSD, HASH)
    # P1 02, P2 00, length of following data, then the INSTALL [for load] fields without the token
    fields = bytes([5]) + PKG + bytes([9]) + SSD + bytes([32]) + HASH + b"\x00"
    assert data == b"\x02\x00" + bytes([len(fields)]) + fields
    assert dm.token_data_for_command(c.install_for_load(PKG, SSD, HASH)) == data


@pytest.mark.parametrize(
    ("token_data", "command"),
    [
        (
            lambda: dm.install_token_data(PKG, APP, APP, b"\x00", b"\xc9\x00"),
            lambda: c.install_for_install(PKG, APP, APP, b"\x00", b"\xc9\x00"),
        ),
        (
            lambda: dm.install_token_data(PKG, APP, APP, make_selectable=False),
            lambda: c.install_for_install(PKG, APP, APP, make_selectable=False),
        ),
        (lambda: dm.make_selectable_token_data(APP), lambda: c.install_for_make_selectable(APP)),
        (lambda: dm.extradition_token_data(SSD, APP), lambda: c.install_for_extradition(SSD, APP)),
        (
            lambda: dm.registry_update_token_data(APP, SSD, b"\x00\x00\x00"),
            lambda: c.install_for_registry_update(APP, SSD, b"\x00\x00\x00"),
        ),
        (lambda: dm.delete_token_data(APP), lambda: c.delete(APP)),
        (lambda: dm.delete_token_data(PKG, related=True), lambda: c.delete(PKG, related=True)),
    ],
)
def test_token_data_matches_command(token_data: Callable[[], bytes], command: Callable[[], bytes]) -> None:
    td = token_data()
    cmd = command()
    assert dm.token_data_for_command(cmd) == td
    capdu = CommandAPDU.from_bytes(cmd)
    assert td[:2] == bytes([capdu.p1, capdu.p2])
    assert td[2] == len(td) - 3
    token = bytes(range(64))
    with_token = dm.attach_token(cmd, token)
    assert dm.extract_token(with_token) == (td, token)


def test_attach_token_delete_uses_9e() -> None:
    cmd = dm.attach_token(c.delete(APP), b"\xaa" * 4)
    assert CommandAPDU.from_bytes(cmd).data == bytes.fromhex("4F08" + APP.hex() + "9E04AAAAAAAA")
    assert cmd == c.delete(APP, token=b"\xaa" * 4)
    cmd = dm.attach_token(c.install_for_load(PKG, SSD, HASH), b"\xbb" * 200)
    assert cmd == c.install_for_load(PKG, SSD, HASH, token=b"\xbb" * 200)


def test_token_for_wrong_commands() -> None:
    with pytest.raises(DelegatedManagementError):
        dm.token_data_for_command(c.get_status(0x40))
    with pytest.raises(DelegatedManagementError):
        dm.token_data_for_command(c.delete(APP, token=b"\x01"))
    with pytest.raises(DelegatedManagementError):
        dm.token_data_for_command(b"\x80")
    with pytest.raises(DelegatedManagementError):
        dm.extract_token(c.install_for_personalization(APP))


@pytest.mark.parametrize(
    "scheme", [dm.SCHEME_ECDSA_P256_SHA256, dm.SCHEME_RSA_PSS_SHA256, dm.SCHEME_RSA_PKCS1V15_SHA256]
)
def test_sign_and_verify(scheme: str, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    key = ec_key if scheme.startswith("ecdsa") else rsa_key
    data = dm.load_token_data(PKG, SSD, HASH)
    token = dm.sign_token(key, data, scheme)
    assert len(token) == (64 if key is ec_key else 256)
    pub = key.public_key()
    assert dm.verify_token(pub, data, token, scheme)
    assert not dm.verify_token(pub, data + b"\x00", token, scheme)
    bad = bytearray(token)
    bad[5] ^= 1
    assert not dm.verify_token(pub, data, bytes(bad), scheme)
    assert not dm.verify_token(pub, data, token[:-1], scheme)
    assert not dm.verify_token(pub, data, b"", scheme)


def test_scheme_key_mismatch(ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(DelegatedManagementError):
        dm.sign_token(rsa_key, b"x", dm.SCHEME_ECDSA_P256_SHA256)
    with pytest.raises(DelegatedManagementError):
        dm.sign_token(ec_key, b"x", dm.SCHEME_RSA_PSS_SHA256)
    with pytest.raises(DelegatedManagementError):
        dm.sign_token(rsa_key, b"x", "rsa-md5")
    with pytest.raises(DelegatedManagementError):
        dm.verify_token(ec_key.public_key(), b"x", bytes(256), dm.SCHEME_RSA_PSS_SHA256)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(DelegatedManagementError):
        dm.sign_token(p384, b"x", dm.SCHEME_ECDSA_P256_SHA256)


def test_aes_receipt_rfc4493() -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert dm.compute_receipt(key, b"") == bytes.fromhex("bb1d6929e95937287fa37d129b756746")
    msg = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    assert dm.compute_receipt(key, msg) == bytes.fromhex("070a16b46b4d4144f79bdd9dd04a287c")


def _independent_retail_mac(key: bytes, data: bytes) -> bytes:
    # Full single-DES CBC with K1 over every block, then DES^-1 with K2 and DES with K1 on the result.
    padded = data + b"\x80" + bytes((-len(data) - 1) % 8)
    k1, k2 = key[:8], key[8:16]
    cbc = Cipher(TripleDES(k1 * 3), modes.CBC(bytes(8))).encryptor()
    h = (cbc.update(padded) + cbc.finalize())[-8:]
    dec = Cipher(TripleDES(k2 * 3), modes.ECB()).decryptor()  # noqa: S305 - one block
    enc = Cipher(TripleDES(k1 * 3), modes.ECB()).encryptor()  # noqa: S305 - one block
    return enc.update(dec.update(h))


@pytest.mark.parametrize("n", [0, 7, 8, 9, 33])
def test_des_receipt_is_retail_mac(n: int) -> None:
    key = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
    data = bytes(range(n))
    assert dm.compute_receipt(key, data, alg="des") == _independent_retail_mac(key, data)


def test_receipt_round_trip_card_and_server() -> None:
    key = bytes(range(16))
    counter = b"\x00\x05"
    cud = dm.card_unique_data(bytes.fromhex("42"), bytes.fromhex("0102030405060708"))
    # card side
    data = dm.load_receipt_data(counter, cud, PKG, SSD)
    receipt = dm.compute_receipt(key, data)
    response = dm.build_confirmation(receipt, counter, cud)
    # server side
    conf = dm.parse_confirmation(response)
    assert conf.receipt == receipt and conf.counter == counter and conf.card_unique_data == cud
    rebuilt = dm.load_receipt_data(conf.counter, conf.card_unique_data, PKG, SSD)
    assert dm.verify_receipt(key, rebuilt, conf.receipt)
    assert not dm.verify_receipt(key, dm.load_receipt_data(counter, cud, APP, SSD), conf.receipt)
    assert not dm.verify_receipt(bytes(16), rebuilt, conf.receipt)
    assert not dm.verify_receipt(key, rebuilt, receipt[:-1])
    assert data == b"\x02\x00\x05" + bytes([len(cud)]) + cud + b"\x05" + PKG + b"\x09" + SSD


def test_receipt_with_token_identifier_and_digest() -> None:
    key = bytes(range(32))  # AES-256 receipt key
    counter, cud, tid, digest = b"\x01\x00", b"CUD", b"\x07", bytes(32)
    data = dm.install_receipt_data(counter, cud, PKG, APP, token_identifier=tid, token_data_digest=digest)
    response = dm.build_confirmation(dm.compute_receipt(key, data), counter, cud, tid, digest)
    conf = dm.parse_confirmation(response)
    assert conf.confirmation_data == dm.confirmation_data(counter, cud, tid, digest)
    # the server rebuilds the receipt input from what the card confirmed plus what it asked for
    assert dm.verify_receipt(
        key, conf.confirmation_data + bytes([len(PKG)]) + PKG + bytes([len(APP)]) + APP, conf.receipt
    )
    assert dm.verify_receipt(
        key,
        dm.install_receipt_data(
            conf.counter,
            conf.card_unique_data,
            PKG,
            APP,
            token_identifier=conf.token_identifier,
            token_data_digest=conf.token_data_digest,
        ),
        conf.receipt,
    )


def test_other_receipt_data() -> None:
    ctr, cud = b"\x00\x01", b"\x11" * 10
    assert dm.install_receipt_data(ctr, cud, PKG, APP).endswith(b"\x05" + PKG + b"\x08" + APP)
    assert dm.delete_receipt_data(ctr, cud, APP).endswith(b"\x08" + APP)
    assert dm.extradition_receipt_data(ctr, cud, ISD, APP, SSD).endswith(b"\x09" + SSD)
    assert dm.registry_update_receipt_data(ctr, cud, ISD, APP, SSD, b"\x00\x00\x00").endswith(b"\x03\x00\x00\x00\x00")
    with pytest.raises(GPError):
        dm.receipt_data(b"\x01", cud)


def test_confirmation_formats() -> None:
    assert dm.parse_confirmation(b"\x00") == dm.Confirmation()
    assert dm.build_confirmation() == b"\x00"
    assert not dm.parse_confirmation(b"").has_receipt
    # GP 2.1.1 layout: receipt, counter, card unique data without an overall length
    legacy = b"\x08" + bytes(8) + b"\x02\x00\x07" + b"\x03abc"
    conf = dm.parse_confirmation(legacy)
    assert conf.receipt == bytes(8) and conf.counter == b"\x00\x07" and conf.card_unique_data == b"abc"
    with_token = dm.build_confirmation(b"R" * 16, b"\x00\x01", b"cud", b"\x01", b"D" * 32)
    conf = dm.parse_confirmation(with_token)
    assert conf.token_identifier == b"\x01" and conf.token_data_digest == b"D" * 32
    for bad in (b"\x05ab", b"\x01a\x09", b"\x01a\x02\x00\x01\x05x", b"\x01a\x02\x00\x01\x00\x00\x00\x00"):
        with pytest.raises(DelegatedManagementError):
            dm.parse_confirmation(bad)


def test_receipt_key_errors() -> None:
    with pytest.raises(DelegatedManagementError):
        dm.compute_receipt(bytes(15), b"")
    with pytest.raises(DelegatedManagementError):
        dm.compute_receipt(bytes(8), b"", alg="des")
    with pytest.raises(DelegatedManagementError):
        dm.compute_receipt(bytes(16), b"", alg="rc4")
