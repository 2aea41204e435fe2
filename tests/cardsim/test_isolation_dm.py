"""Security domain isolation and Delegated Management (GP 2.3.1 §9, Annex C) on the emulated card."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cardsim.constants import SSD_MODULE_AID, SSD_PACKAGE_AID
from gp import commands as c
from gp import dm
from tests.cardsim.conftest import EMPTY, LIB_BER
from tests.cardsim.hostlib import HostSession, check_consistency

SSD_A = bytes.fromhex("A0000005590101")  # bank A: Delegated Management
SSD_B = bytes.fromhex("A0000005590201")  # bank B: Authorized Management
APP_B = bytes.fromhex("0102030405060708B1")
RECEIPT_KEY = bytes(range(16))
DM_PRIVS = c.Privileges.SECURITY_DOMAIN | c.Privileges.DELEGATED_MANAGEMENT
AM_PRIVS = c.Privileges.SECURITY_DOMAIN | c.Privileges.AUTHORIZED_MANAGEMENT


@pytest.fixture
def token_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def two_banks(make_card, load_file, token_key):
    card = make_card(token_key=token_key.public_key(), receipt_key=RECEIPT_KEY)
    isd = HostSession(card.transmit).open()
    params = c.install_parameters(c.sd_install_parameters(0x03, 0x70))
    for aid, privs in ((SSD_A, DM_PRIVS), (SSD_B, AM_PRIVS)):
        isd.ok(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, aid, privs, params))
    # bank B's content: the Empty package loaded into B by the ISD, one instance
    empty = load_file(EMPTY)
    assert all(sw == 0x9000 for _, sw in isd.load(empty, sd_aid=SSD_B))
    assert isd.install(empty.package_aid, empty.applet_aids[0], APP_B)[1] == 0x9000
    return card


def _verify(conf_bytes: bytes, make_data) -> dm.Confirmation:
    conf = dm.parse_confirmation(conf_bytes)
    assert conf.has_receipt
    assert dm.verify_receipt(RECEIPT_KEY, make_data(conf.counter, conf.card_unique_data), conf.receipt)
    return conf


def test_ssd_cannot_touch_another_ssds_content(two_banks, load_file, token_key) -> None:
    card = two_banks
    empty = load_file(EMPTY)
    a = HostSession(card.transmit, SSD_A).open()
    # list-as-owner: A sees itself only, neither B nor B's application or load file
    assert [e.aid for e in a.status(c.STATUS_APPS)] == [SSD_A]
    assert a.status(c.STATUS_ELF_MODULES) == []
    assert a.status(c.STATUS_ISD) == []
    # delete, extradite, personalise, update, instantiate: refused as "not found" even with valid tokens
    assert a.delete(APP_B, token_key=token_key)[1] == 0x6A88
    assert a.delete(empty.package_aid, token_key=token_key)[1] == 0x6A88
    tok = dm.sign_token(token_key, dm.extradition_token_data(SSD_A, APP_B))
    assert a.send(c.install_for_extradition(SSD_A, APP_B, token=tok))[1] == 0x6A88
    assert a.send(c.install_for_personalization(APP_B))[1] == 0x6A88
    tok = dm.sign_token(token_key, dm.registry_update_token_data(APP_B, SSD_A))
    assert a.send(c.install_for_registry_update(APP_B, SSD_A, token=tok))[1] == 0x6A88
    assert (
        a.install(empty.package_aid, empty.applet_aids[0], bytes.fromhex("0102030405060708A1"), token_key=token_key)[1]
        == 0x6A88
    )
    # B (Authorized Management) sees and manages its own content without tokens, but not A
    b = HostSession(card.transmit, SSD_B).open()
    assert sorted(e.aid for e in b.status(c.STATUS_APPS)) == sorted([SSD_B, APP_B])
    assert [e.aid for e in b.status(c.STATUS_ELF)] == [empty.package_aid]
    assert b.delete(SSD_A)[1] == 0x6A88
    b.ok(c.install_for_personalization(APP_B))
    b.ok(c.store_data(bytes.fromhex("DF200101"), 0, last=True, flags=c.STORE_DATA_BER))
    assert b.delete(empty.package_aid)[1] == 0x9000  # with its instance (related objects)
    check_consistency(card.state)


def test_delegated_management_tokens_and_receipts(two_banks, load_file, token_key) -> None:
    card = two_banks
    lib = load_file(LIB_BER)
    a = HostSession(card.transmit, SSD_A).open()
    h = lib.load_file_data_block_hash("sha256")
    # no token: refused
    assert a.send(c.install_for_load(lib.package_aid, SSD_A, h))[1] == 0x6982
    # a token for another operation (an install token) or for another AID: refused
    wrong_op = dm.sign_token(token_key, dm.install_token_data(lib.package_aid, lib.package_aid, lib.package_aid))
    assert a.send(c.install_for_load(lib.package_aid, SSD_A, h, token=wrong_op))[1] == 0x6982
    other_aid = dm.sign_token(token_key, dm.load_token_data(bytes.fromhex("A00000FFFFA9"), SSD_A, h))
    assert a.send(c.install_for_load(lib.package_aid, SSD_A, h, token=other_aid))[1] == 0x6982
    forged = dm.sign_token(ec.generate_private_key(ec.SECP256R1()), dm.load_token_data(lib.package_aid, SSD_A, h))
    assert a.send(c.install_for_load(lib.package_aid, SSD_A, h, token=forged))[1] == 0x6982
    # valid token: LOAD succeeds and the last block carries the load receipt
    a = HostSession(card.transmit, SSD_A).open()
    results = a.load(lib, sd_aid=SSD_A, token_key=token_key)
    assert all(sw == 0x9000 for _, sw in results)
    conf = _verify(results[-1][0], lambda n, cud: dm.load_receipt_data(n, cud, lib.package_aid, SSD_A))
    assert conf.card_unique_data == dm.card_unique_data(b"ECARD", bytes.fromhex("0102030405060708"))
    # install and delete with tokens, receipts verify; counters increase
    empty = load_file(EMPTY)
    # Empty is B's: A loads its own copy under another name is impossible (same AID) -> use the lib
    tok_ok = a.delete(lib.package_aid, related=True, token_key=token_key)
    conf2 = _verify(tok_ok[0], lambda n, cud: dm.delete_receipt_data(n, cud, lib.package_aid))
    assert int.from_bytes(conf2.counter, "big") == int.from_bytes(conf.counter, "big") + 1
    assert empty.package_aid.hex().upper() in card.state["elfs"]
    # a delete token for a different AID does not delete this one
    a = HostSession(card.transmit, SSD_A).open()
    assert all(sw == 0x9000 for _, sw in a.load(lib, sd_aid=SSD_A, token_key=token_key))
    tok = dm.sign_token(token_key, dm.delete_token_data(bytes.fromhex("A00000FFFFA9"), related=True))
    assert a.send(c.delete(lib.package_aid, related=True, token=tok))[1] == 0x6982
    check_consistency(card.state)


def test_dm_install_receipt_and_am_needs_no_token(make_card, load_file, token_key) -> None:
    card = make_card(token_key=token_key.public_key(), receipt_key=RECEIPT_KEY)
    isd = HostSession(card.transmit).open()
    params = c.install_parameters(c.sd_install_parameters(0x03, 0x70))
    isd.ok(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, SSD_A, DM_PRIVS, params))
    isd.ok(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, SSD_B, AM_PRIVS, params))
    empty = load_file(EMPTY)
    a = HostSession(card.transmit, SSD_A).open()
    assert all(sw == 0x9000 for _, sw in a.load(empty, sd_aid=SSD_A, token_key=token_key))
    app = bytes.fromhex("0102030405060708A1")
    assert a.install(empty.package_aid, empty.applet_aids[0], app)[1] == 0x6982  # no token
    data, sw = a.install(empty.package_aid, empty.applet_aids[0], app, token_key=token_key)
    assert sw == 0x9000
    _verify(data, lambda n, cud: dm.install_receipt_data(n, cud, empty.package_aid, app))
    # an SSD cannot hand out issuer privileges
    tok = dm.sign_token(
        token_key, dm.install_token_data(SSD_PACKAGE_AID, SSD_MODULE_AID, SSD_A + b"\x09", AM_PRIVS.to_bytes(), params)
    )
    assert (
        a.send(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, SSD_A + b"\x09", AM_PRIVS, params, token=tok))[1]
        == 0x6985
    )
    # Authorized Management: no token needed, no receipt
    b = HostSession(card.transmit, SSD_B).open()
    lib = load_file(LIB_BER)
    results = b.load(lib)
    assert all(sw == 0x9000 for _, sw in results) and results[-1][0] == b"\x00"
    # the ISD manages everything, including A's content
    isd = HostSession(card.transmit).open()
    assert isd.delete(SSD_A, related=True)[1] == 0x9000
    assert SSD_A.hex().upper() not in card.state["sds"] and app.hex().upper() not in card.state["apps"]
    check_consistency(card.state)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_rsa_token_key_put_by_the_issuer(make_card, load_file, bits) -> None:
    """The agency installs an RSA token verification key with PUT KEY (extended APDU for 2048 bits)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gp.keys import encode_put_key_rsa

    priv = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    nums = priv.public_key().public_numbers()
    card = make_card(receipt_key=RECEIPT_KEY)
    isd = HostSession(card.transmit).open()
    data = encode_put_key_rsa(0x70, nums.n.to_bytes(bits // 8, "big"), nums.e.to_bytes(3, "big"))
    assert isd.ok(c.put_key(0x70, data[1:])) == b"\x70"
    info = {k.kvn: k for k in c.parse_key_information(isd.ok(c.get_data(c.TAG_KEY_INFO)))}
    assert info[0x70].components[0] == (0xA1, bits // 8)
    if bits > 1024:
        return  # a 256-byte token does not fit a short INSTALL (gp.commands builds short INSTALLs only)
    params = c.install_parameters(c.sd_install_parameters(0x03, 0x70))
    isd.ok(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, SSD_A, DM_PRIVS, params))
    a = HostSession(card.transmit, SSD_A).open()
    lib = load_file(LIB_BER)
    h = lib.load_file_data_block_hash("sha256")
    token = dm.sign_token(priv, dm.load_token_data(lib.package_aid, SSD_A, h), dm.SCHEME_RSA_PKCS1V15_SHA256)
    assert a.send(c.install_for_load(lib.package_aid, SSD_A, h, token=token[:-1] + bytes([token[-1] ^ 1])))[1] == 0x6982
    assert a.send(c.install_for_load(lib.package_aid, SSD_A, h, token=token))[1] == 0x9000
