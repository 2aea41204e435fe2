"""DAP verification on the emulated card (GP 2.3.1 §9.2.1, §11.6.2.3; the scheme is gp.dap)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cardsim.constants import SSD_MODULE_AID, SSD_PACKAGE_AID
from cardsim.state import dap_key, key_versions
from gp import commands as c
from gp import dap
from gp.aids import ISD_AID
from tests.cardsim.conftest import EMPTY
from tests.cardsim.hostlib import HostSession, check_consistency

BANK = bytes.fromhex("A0000005590101")
OTHER_BANK = bytes.fromhex("A0000005590201")
DAP_SSD = c.Privileges.SECURITY_DOMAIN | c.Privileges.AUTHORIZED_MANAGEMENT | c.Privileges.DAP_VERIFICATION


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _install_ssd(card, aid: bytes, privileges: c.Privileges = DAP_SSD) -> int:
    isd = HostSession(card.transmit).open()
    params = c.install_parameters(c.sd_install_parameters(0x03, 0x70))
    return isd.send(c.install_for_install(SSD_PACKAGE_AID, SSD_MODULE_AID, aid, privileges, params))[1]


def _put_dap_key(card, sd: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    s = HostSession(card.transmit, sd).open()
    return s.ok(c.put_key(dap.DAP_KVN, dap.put_key_data(dap.public_point(key.public_key()))[1:]))


@pytest.fixture
def bank_card(make_card):
    """A card with two bank SSDs holding DAP Verification, each with its own DAP key."""
    card = make_card()
    keys = {BANK: _new_key(), OTHER_BANK: _new_key()}
    for aid, key in keys.items():
        assert _install_ssd(card, aid) == 0x9000
        assert _put_dap_key(card, aid, key) == bytes((dap.DAP_KVN,))  # an ECC key: no KCV
    return card, keys


def _signed(lf, key: ec.EllipticCurvePrivateKey) -> bytes:
    return dap.sign(key, dap.lfdb_hash(lf.load_file_data_block()))


def _elfs(card) -> set[str]:
    return set(card.state["elfs"])


def test_put_key_stores_the_dap_key_and_the_card_shows_it(bank_card) -> None:
    card, keys = bank_card
    assert dap_key(card.state, BANK) == dap.public_point(keys[BANK].public_key())
    assert key_versions(card.state, BANK) == {0x30: "aes", dap.DAP_KVN: "ec"}
    s = HostSession(card.transmit, BANK).open()
    info = c.parse_key_information(s.ok(c.get_data(c.TAG_KEY_INFO)))
    assert {k.kvn for k in info} == {0x30, dap.DAP_KVN}


def test_a_load_with_the_banks_dap_is_accepted(bank_card, load_file) -> None:
    card, keys = bank_card
    lf = load_file(EMPTY)
    s = HostSession(card.transmit, BANK).open()
    results = s.load(lf, daps=((BANK, _signed(lf, keys[BANK])),))
    assert [sw for _, sw in results] == [0x9000] * len(results)
    assert card.state["elfs"][lf.package_aid.hex().upper()]["sd"] == BANK.hex().upper()
    check_consistency(card.state)


@pytest.mark.parametrize("case", ["wrong-signature", "other-banks-key", "missing-block", "other-sd-block"])
def test_a_load_without_a_valid_dap_is_refused_at_the_last_block(bank_card, load_file, case) -> None:
    card, keys = bank_card
    lf = load_file(EMPTY)
    before = _elfs(card)
    good = _signed(lf, keys[BANK])
    daps = {
        "wrong-signature": ((BANK, bytes([good[0] ^ 1]) + good[1:]),),
        "other-banks-key": ((BANK, _signed(lf, keys[OTHER_BANK])),),
        "missing-block": (),
        "other-sd-block": ((OTHER_BANK, _signed(lf, keys[OTHER_BANK])),),
    }[case]
    s = HostSession(card.transmit, BANK).open()
    results = s.load(lf, daps=daps)
    assert [sw for _, sw in results[:-1]] == [0x9000] * (len(results) - 1)
    assert results[-1][1] == 0x6982
    assert _elfs(card) == before and card.state["load"] is None  # nothing kept
    # the same load with the right DAP still goes through afterwards
    assert s.load(lf, daps=((BANK, good),))[-1][1] == 0x9000


def test_a_tampered_lfdb_is_refused_whatever_hash_install_for_load_names(bank_card, load_file) -> None:
    card, keys = bank_card
    lf = load_file(EMPTY)
    lfdb = bytearray(lf.load_file_data_block())
    lfdb[-1] ^= 0x01
    before = _elfs(card)
    s = HostSession(card.transmit, BANK).open()
    signature = _signed(lf, keys[BANK])
    # the original hash in INSTALL [for load], a different LFDB in the LOAD blocks
    assert s.load(lf, daps=((BANK, signature),), lfdb=bytes(lfdb))[-1][1] == 0x6982
    # the tampered LFDB's own hash in INSTALL [for load]: the signature does not cover it
    h = dap.lfdb_hash(bytes(lfdb))
    s.ok(c.install_for_load(lf.package_aid, b"", h))
    cmds = c.load_commands(bytes(lfdb), s.block_size, dap_blocks=((BANK, signature),))
    assert [s.send(cmd)[1] for cmd in cmds][-1] == 0x6982
    assert _elfs(card) == before


def test_install_for_load_without_the_hash_is_refused_when_a_dap_is_due(bank_card, load_file) -> None:
    card, _ = bank_card
    lf = load_file(EMPTY)
    s = HostSession(card.transmit, BANK).open()
    assert s.load(lf, with_hash=False)[0][1] == 0x6A80
    # the ISD loading into the bank's SSD needs the bank's DAP too
    isd = HostSession(card.transmit).open()
    assert isd.send(c.install_for_load(lf.package_aid, BANK))[1] == 0x6A80
    assert card.state["load"] is None


def test_the_isd_loading_into_the_banks_ssd_needs_the_banks_dap(bank_card, load_file) -> None:
    card, keys = bank_card
    lf = load_file(EMPTY)
    isd = HostSession(card.transmit).open()
    assert isd.load(lf, sd_aid=BANK)[-1][1] == 0x6982
    assert isd.load(lf, sd_aid=BANK, daps=((BANK, _signed(lf, keys[BANK])),))[-1][1] == 0x9000


def test_an_ssd_without_the_privilege_verifies_nothing(make_card, load_file) -> None:
    card = make_card()
    plain = c.Privileges.SECURITY_DOMAIN | c.Privileges.AUTHORIZED_MANAGEMENT
    assert _install_ssd(card, BANK, plain) == 0x9000
    lf = load_file(EMPTY)
    s = HostSession(card.transmit, BANK).open()
    assert s.load(lf)[-1][1] == 0x9000


def test_a_dap_ssd_without_a_dap_key_accepts_no_load(make_card, load_file) -> None:
    card = make_card()
    assert _install_ssd(card, BANK) == 0x9000
    lf = load_file(EMPTY)
    s = HostSession(card.transmit, BANK).open()
    assert s.load(lf, daps=((BANK, _signed(lf, _new_key())),))[-1][1] == 0x6982
    assert lf.package_aid.hex().upper() not in card.state["elfs"]


def test_mandated_dap_needs_the_issuers_signature_on_every_load(make_card, load_file) -> None:
    card = make_card(mandated_dap=True)
    agency, bank = _new_key(), _new_key()
    assert _put_dap_key(card, ISD_AID, agency) == bytes((dap.DAP_KVN,))
    assert _install_ssd(card, BANK) == 0x9000
    _put_dap_key(card, BANK, bank)
    lf = load_file(EMPTY)
    s = HostSession(card.transmit, BANK).open()
    # the bank's DAP alone is not enough, nor the agency's alone
    assert s.load(lf, daps=((BANK, _signed(lf, bank)),))[-1][1] == 0x6982
    assert s.load(lf, daps=((ISD_AID, _signed(lf, agency)),))[-1][1] == 0x6982
    assert lf.package_aid.hex().upper() not in card.state["elfs"]
    both = ((ISD_AID, _signed(lf, agency)), (BANK, _signed(lf, bank)))
    assert s.load(lf, daps=both)[-1][1] == 0x9000
    # a load by the ISD into itself needs the mandated DAP as well
    isd = HostSession(card.transmit).open()
    assert isd.send(c.delete(lf.package_aid))[1] == 0x9000
    assert isd.load(lf)[-1][1] == 0x6982
    assert isd.load(lf, daps=((ISD_AID, _signed(lf, agency)),))[-1][1] == 0x9000


def test_mandated_dap_is_the_issuers_alone(make_card) -> None:
    card = make_card()
    mandated = DAP_SSD | c.Privileges.MANDATED_DAP_VERIFICATION
    assert _install_ssd(card, BANK, mandated) == 0x6985
    assert _install_ssd(card, BANK) == 0x9000
    isd = HostSession(card.transmit).open()
    assert isd.send(c.install_for_registry_update(BANK, privileges=mandated))[1] == 0x6985
