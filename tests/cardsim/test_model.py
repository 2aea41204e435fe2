"""The card model in-process: commands, registry, lifecycles, loading the real CAP files."""

from __future__ import annotations

import pytest

from cardsim.constants import ISD_AID, SSD_MODULE_AID, SSD_PACKAGE_AID
from gp import commands as c
from gp.apdu import SW
from gp.keys import StaticKeys, encode_put_key_ec_p256, encode_put_key_symmetric, kcv_aes
from tests.cardsim.conftest import ALGTEST, EMPTY, LIB_BER, LIB_DEBUG, SVC
from tests.cardsim.hostlib import HostSession, check_consistency, sw_of

SSD_PRIVS = c.Privileges.SECURITY_DOMAIN | c.Privileges.AUTHORIZED_MANAGEMENT


def test_select_isd_fci_and_get_data(make_card) -> None:
    card = make_card()
    r = card.transmit(c.select())
    assert sw_of(r) == 0x9000
    fci = c.parse_fci(r[:-2])
    assert fci.aid == ISD_AID and fci.max_command_data_length == 0xFF
    assert fci.card_data is not None and fci.card_data.scp == ((3, 0x70),) and fci.card_data.gp_version == (2, 3, 1)
    cplc = card.transmit(c.get_data(c.TAG_CPLC))
    assert sw_of(cplc) == 0x9000 and c.parse_cplc(cplc[:-2]).ic_serial_number == bytes.fromhex("05060708")
    assert c.tagged_value(card.transmit(c.get_data(c.TAG_CIN))[:-2], 0x45) == bytes.fromhex("0102030405060708")
    assert c.parse_kdd(card.transmit(c.get_data(c.TAG_KDD))[:-2]) == bytes.fromhex("00000102030405060708")
    assert c.tagged_value(card.transmit(c.get_data(c.TAG_IIN))[:-2], 0x42) == b"ECARD"
    info = c.parse_key_information(card.transmit(c.get_data(c.TAG_KEY_INFO))[:-2])
    assert [(k.kvn, k.key_id, k.type_name, k.key_length) for k in info] == [
        (0x30, 1, "AES", 16),
        (0x30, 2, "AES", 16),
        (0x30, 3, "AES", 16),
    ]
    assert c.parse_card_data(card.transmit(c.get_data(c.TAG_CARD_DATA))[:-2]).scp == ((3, 0x70),)
    assert c.parse_sequence_counter(card.transmit(c.get_data(c.TAG_SEQUENCE_COUNTER))[:-2]) == 0
    assert sw_of(card.transmit(c.get_data(0x5F20))) == 0x6A88


def test_select_partial_next_and_errors(make_card, load_file) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    empty = load_file(EMPTY)
    assert [sw for _, sw in s.load(empty)] == [0x9000, 0x9000]
    for suffix in (b"\x01", b"\x02"):
        app = empty.applet_aids[0] + suffix
        assert s.install(empty.package_aid, empty.applet_aids[0], app)[1] == 0x9000
    # partial AID: first occurrence, then next occurrence (GP 2.3.1 §11.9.2.2)
    r = card.transmit(c.select(empty.applet_aids[0]))
    assert c.parse_fci(r[:-2]).aid == empty.applet_aids[0] + b"\x01"
    r = card.transmit(c.select(empty.applet_aids[0], next_occurrence=True))
    assert c.parse_fci(r[:-2]).aid == empty.applet_aids[0] + b"\x02"
    assert sw_of(card.transmit(c.select(empty.applet_aids[0], next_occurrence=True))) == 0x6A82
    assert sw_of(card.transmit(c.select(bytes.fromhex("A0000009999999")))) == 0x6A82
    assert sw_of(card.transmit(bytes.fromhex("00A4041000"))) == 0x6A86  # P1/P2 checks
    assert sw_of(card.transmit(bytes.fromhex("00A4040C00"))) == 0x9000  # ISD, no FCI
    assert sw_of(card.transmit(bytes.fromhex("01A4040000"))) == 0x6881  # logical channel 1


def test_session_ends_on_select_and_reset(make_card) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    s.ok(c.get_status(c.STATUS_ISD))
    card.transmit(c.select())  # SELECT ends the session: the next secured command is refused
    assert s.send(c.get_status(c.STATUS_ISD))[1] == 0x6982
    s = HostSession(card.transmit).open()
    card.reset()
    assert sw_of(card.transmit(s.channel.wrap(c.get_status(c.STATUS_ISD)))) == 0x6982
    # a MAC failure ends the session too
    s = HostSession(card.transmit).open()
    bad = bytearray(s.channel.wrap(c.get_status(c.STATUS_ISD)))
    bad[-2] ^= 1
    assert sw_of(card.transmit(bytes(bad))) == 0x6982
    assert sw_of(card.transmit(s.channel.wrap(c.get_status(c.STATUS_ISD)))) == 0x6982
    # management commands need a session
    assert sw_of(card.transmit(c.get_status(c.STATUS_ISD))) == 0x6982


@pytest.mark.parametrize(
    ("scp", "level"),
    [(3, 0x00), (3, 0x01), (3, 0x03), (3, 0x13), (3, 0x33), (2, 0x00), (2, 0x01), (2, 0x03), (2, 0x13)],
)
def test_all_security_levels(make_card, scp, level) -> None:
    card = make_card(scp=scp)
    s = HostSession(card.transmit, scp=scp, security_level=level).open()
    assert [e.aid for e in s.status(c.STATUS_ISD)] == [ISD_AID]


def test_scp03_s16(make_card) -> None:
    from gp.scp import SCP03

    card = make_card()
    card.transmit(c.select())
    ch = SCP03(
        StaticKeys.single(bytes.fromhex("404142434445464748494A4B4C4D4E4F"), 0x30), 0x33, s16=True, sd_aid=ISD_AID
    )
    r = card.transmit(ch.initialize_update())
    assert sw_of(card.transmit(ch.external_authenticate(r))) == 0x9000
    assert sw_of(ch.unwrap(card.transmit(ch.wrap(c.get_status(c.STATUS_ISD))))) == 0x9000


def test_load_install_delete_real_caps_and_imports(make_card, load_file) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    initial = s.registry()
    svc, ber, dbg = load_file(SVC), load_file(LIB_BER), load_file(LIB_DEBUG)
    # The service imports both libraries: loaded first, the last LOAD block fails with 6A88
    results = s.load(svc)
    assert results[-1][1] == SW.REFERENCED_DATA_NOT_FOUND == 0x6A88
    assert all(sw == 0x9000 for _, sw in results[:-1])
    assert card.state["load"] is None and c.parse_get_status  # nothing left of it
    assert svc.package_aid.hex().upper() not in card.state["elfs"]
    for lf in (ber, dbg, svc):
        assert all(sw == 0x9000 for _, sw in s.load(lf))
    assert s.install(svc.package_aid, svc.applet_aids[0], svc.applet_aids[0])[1] == 0x9000
    elfs = {e.aid: e for e in s.status(c.STATUS_ELF_MODULES)}
    assert elfs[svc.package_aid].modules == (svc.applet_aids[0],)
    apps = {e.aid: e for e in s.status(c.STATUS_APPS)}
    assert apps[svc.applet_aids[0]].lifecycle == c.APP_SELECTABLE
    assert apps[svc.applet_aids[0]].elf_aid == svc.package_aid
    # dependants: the library cannot go while the service imports it, even with related objects
    assert s.delete(ber.package_aid)[1] == 0x6985
    assert s.delete(svc.package_aid, related=False)[1] == 0x6985  # it has an instance
    assert s.delete(svc.package_aid)[1] == 0x9000
    assert s.delete(ber.package_aid)[1] == 0x9000 and s.delete(dbg.package_aid)[1] == 0x9000
    assert s.registry() == initial
    check_consistency(card.state)


def test_legacy_get_status_and_continuation(make_card, load_file) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    legacy = s.status(c.STATUS_ELF_MODULES, tagged=False)
    tagged = s.status(c.STATUS_ELF_MODULES)
    assert [e.aid for e in legacy] == [e.aid for e in tagged]
    assert any(e.modules == (SSD_MODULE_AID,) for e in legacy)
    data, sw = s.send(c.get_status(c.STATUS_ELF_MODULES))
    assert sw == 0x6310 and len(data) <= 200  # more data: continue with P2 b1 set
    isd = s.status(c.STATUS_ISD, tagged=False)
    assert isd[0].aid == ISD_AID and isd[0].lifecycle == c.CARD_SECURED
    assert s.send(c.get_status(c.STATUS_APPS, aid_filter=bytes.fromhex("A000000999")))[1] == 0x6A88


def test_memory_quota(make_card, load_file) -> None:
    card = make_card(memory=3000)
    s = HostSession(card.transmit).open()
    results = s.load(load_file(ALGTEST))  # 3142 bytes of LFDB
    assert results[-1][1] == 0x6A84 and card.state["load"] is None
    assert all(sw == 0x9000 for _, sw in s.load(load_file(EMPTY)))


def test_load_errors(make_card, load_file) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    empty = load_file(EMPTY)
    assert s.send(c.load_commands(b"\x01\x00\x00", 200)[0])[1] == 0x6985  # LOAD without INSTALL [for load]
    # wrong hash
    s.ok(c.install_for_load(empty.package_aid, b"", bytes(32)))
    assert s.send(c.load_commands(empty.load_file_data_block(), 239)[0])[1] == 0x6A80
    # out of sequence
    s.ok(c.install_for_load(empty.package_aid))
    cmds = c.load_commands(empty.load_file_data_block(), 100)
    assert s.send(cmds[1])[1] == 0x6A86
    # already loaded
    assert all(sw == 0x9000 for _, sw in s.load(empty))
    assert s.send(c.install_for_load(empty.package_aid))[1] == 0x6985
    assert s.install(empty.package_aid, bytes.fromhex("0102030405060799"), bytes(8))[1] == 0x6A88


def test_ssd_creation_put_key_store_data_set_status(make_card) -> None:
    card = make_card(receipt_key=bytes(16))
    isd = HostSession(card.transmit).open()
    ssd = bytes.fromhex("A00000015153504101")
    params = c.install_parameters(c.sd_install_parameters(0x02, 0x55))
    _, sw = isd.install(SSD_PACKAGE_AID, SSD_MODULE_AID, ssd, privileges=SSD_PRIVS.to_bytes(), params=params)
    assert sw == 0x9000
    entry = next(e for e in isd.status(c.STATUS_APPS) if e.aid == ssd)
    assert entry.is_security_domain and c.Privileges.AUTHORIZED_MANAGEMENT in entry.privileges
    # personalise the SSD through the ISD: INSTALL [for personalization] + STORE DATA
    isd.ok(c.install_for_personalization(ssd))
    isd.ok(c.store_data(bytes.fromhex("4205112233445545021234"), 0, last=True, flags=c.STORE_DATA_BER))
    # the new SSD speaks SCP02 with the initial key; its owner rotates it with PUT KEY
    s = HostSession(card.transmit, ssd, scp=2).open()
    new = StaticKeys.single(bytes(range(16)), 0x21)
    data = encode_put_key_symmetric(0x21, new, s.channel.encrypt_key, algorithm="des")
    resp = s.ok(c.put_key(0x21, data[1:], old_kvn=0x20))
    assert resp[0] == 0x21 and len(resp) == 10
    bad = bytearray(encode_put_key_symmetric(0x22, new, s.channel.encrypt_key, algorithm="des"))
    bad[-1] ^= 1  # wrong KCV
    assert s.send(c.put_key(0x22, bytes(bad[1:])))[1] == 0x6A80
    assert c.tagged_value(s.ok(c.get_data(0x42)), 0x42) == bytes.fromhex("1122334455")
    s2 = HostSession(card.transmit, ssd, scp=2, key=bytes(range(16)), kvn=0x21).open()
    # lock / unlock / personalise the SSD from the ISD; a locked SD cannot be selected
    isd = HostSession(card.transmit).open()
    isd.ok(c.set_status(c.SET_STATUS_APP, 0x80, ssd))
    assert sw_of(card.transmit(c.select(ssd))) == 0x6A81
    isd = HostSession(card.transmit).open()
    isd.ok(c.set_status(c.SET_STATUS_APP, 0x00, ssd))
    isd.ok(c.set_status(c.SET_STATUS_APP, c.SD_PERSONALIZED, ssd))
    assert next(e for e in isd.status(c.STATUS_APPS) if e.aid == ssd).lifecycle == c.SD_PERSONALIZED
    assert s2.channel is not None
    # EC public key (token verification style) into the ISD
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    q = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    assert isd.ok(c.put_key(0x70, encode_put_key_ec_p256(0x70, q)[1:])) == b"\x70"
    info = c.parse_key_information(isd.ok(c.get_data(c.TAG_KEY_INFO)))
    assert {k.kvn for k in info} == {0x30, 0x70, 0x71}
    # AES key set for the ISD (SCP03) with KCVs in the response
    aes = StaticKeys.single(bytes(range(1, 17)), 0x31)
    resp = isd.ok(c.put_key(0x31, encode_put_key_symmetric(0x31, aes, isd.channel.encrypt_key, algorithm="aes")[1:]))
    assert resp == b"\x31" + kcv_aes(aes.enc) * 3
    HostSession(card.transmit, key=bytes(range(1, 17)), kvn=0x31).open()


def test_card_lifecycle(make_card) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    assert s.send(c.set_status(c.SET_STATUS_ISD, c.CARD_INITIALIZED))[1] == 0x6A80  # no way back
    s.ok(c.set_status(c.SET_STATUS_ISD, c.CARD_LOCKED))
    assert s.send(c.install_for_load(bytes.fromhex("A0000009990001")))[1] == 0x6985
    s.ok(c.set_status(c.SET_STATUS_ISD, c.CARD_SECURED))
    s.ok(c.set_status(c.SET_STATUS_ISD, c.CARD_TERMINATED))
    assert sw_of(card.transmit(c.select(bytes.fromhex("A000000151535041")))) in (0x6A81, 0x6A82)
    assert sw_of(card.transmit(c.select())) == 0x9000  # TERMINATED: the ISD still answers GET DATA
    assert sw_of(card.transmit(c.get_data(c.TAG_CPLC))) == 0x9000
    assert sw_of(card.transmit(bytes.fromhex("8050300008") + bytes(8))) == 0x6A81


def test_demo_bank_applet_behaviour(make_card, load_file) -> None:
    card = make_card()
    s = HostSession(card.transmit).open()
    for name in (LIB_BER, LIB_DEBUG, SVC, EMPTY):
        assert all(sw == 0x9000 for _, sw in s.load(load_file(name)))
    svc, empty = load_file(SVC), load_file(EMPTY)
    s.ok(c.install_for_install(svc.package_aid, svc.applet_aids[0], svc.applet_aids[0]))
    card.transmit(c.select(svc.applet_aids[0]))
    assert card.transmit(bytes.fromhex("80CA000000")) == bytes.fromhex("DF010200009000")
    assert card.transmit(bytes.fromhex("8001000000")) == bytes.fromhex("6D00")
    s = HostSession(card.transmit).open()
    s.ok(c.install_for_install(empty.package_aid, empty.applet_aids[0], bytes.fromhex("0102030405060799")))
    card.transmit(c.select(bytes.fromhex("0102030405060799")))
    assert card.transmit(bytes.fromhex("80CB000000"))[-2:] == b"\x90\x00"


@pytest.mark.parametrize(
    ("scp", "i", "level"), [(2, 0x15, 0x03), (2, 0x55, 0x13), (3, 0x00, 0x03), (3, 0x10, 0x03), (3, 0x70, 0x33)]
)
def test_scp_i_parameters(make_card, scp, i, level) -> None:
    card = make_card(scp=scp, i=i)
    s = HostSession(card.transmit, scp=scp, security_level=level).open()
    assert s.channel.i == i if scp == 3 else True
    assert [e.aid for e in s.status(c.STATUS_ISD)] == [ISD_AID]


def test_sequence_counter_persists(make_card) -> None:
    card = make_card(scp=2)
    for expected in (1, 2, 3):
        s = HostSession(card.transmit, scp=2).open()
        assert s.channel is not None
        card.transmit(c.select())
        assert c.parse_sequence_counter(card.transmit(c.get_data(c.TAG_SEQUENCE_COUNTER))[:-2]) == expected
    from cardsim.transport import InProcessCard

    again = InProcessCard(card.path)
    assert c.parse_sequence_counter(again.transmit(c.get_data(c.TAG_SEQUENCE_COUNTER))[:-2]) == 3


def test_extradition_registry_update_lock_sd_and_apps_delete_key(make_card, load_file) -> None:
    card = make_card()
    isd = HostSession(card.transmit).open()
    ssd_a, ssd_b = bytes.fromhex("A0000005590101"), bytes.fromhex("A0000005590201")
    for ssd in (ssd_a, ssd_b):
        isd.ok(
            c.install_for_install(
                SSD_PACKAGE_AID,
                SSD_MODULE_AID,
                ssd,
                SSD_PRIVS,
                c.install_parameters(c.sd_install_parameters(0x03, 0x70)),
            )
        )
    empty = load_file(EMPTY)
    assert all(sw == 0x9000 for _, sw in isd.load(empty, sd_aid=ssd_a))
    app = bytes.fromhex("0102030405060708AA")
    isd.ok(c.install_for_install(empty.package_aid, empty.applet_aids[0], app))
    assert {e.aid: e.associated_sd_aid for e in isd.status(c.STATUS_APPS)}[app] == ssd_a
    # extradition of the instance and of its load file to B (GP 2.3.1 §11.5.2.3.4)
    isd.ok(c.install_for_extradition(ssd_b, app))
    isd.ok(c.install_for_extradition(ssd_b, empty.package_aid))
    assert isd.send(c.install_for_extradition(ssd_a, ssd_a))[1] == 0x6985  # not into itself
    b = HostSession(card.transmit, ssd_b).open()
    assert {e.aid for e in b.status(c.STATUS_APPS)} == {ssd_b, app}
    # registry update: privileges and association back to A
    isd = HostSession(card.transmit).open()
    isd.ok(c.install_for_registry_update(app, ssd_a, b"\x00\x00\x00"))
    assert {e.aid: e.associated_sd_aid for e in isd.status(c.STATUS_APPS)}[app] == ssd_a
    # SET STATUS P1 60: lock SD A and its applications, then unlock
    isd.ok(c.set_status(c.SET_STATUS_SD_AND_APPS, 0x80, ssd_a))
    locked = {e.aid: e.lifecycle for e in isd.status(c.STATUS_APPS)}
    assert locked[ssd_a] & 0x80 and locked[app] & 0x80 and not locked[ssd_b] & 0x80
    assert sw_of(card.transmit(c.select(app))) == 0x6A81
    isd = HostSession(card.transmit).open()
    isd.ok(c.set_status(c.SET_STATUS_SD_AND_APPS, 0x00, ssd_a))
    assert sw_of(card.transmit(c.select(app))) == 0x9000
    # personalise the application with DGI-format STORE DATA through its own SD (the ISD may not:
    # the application is associated with SD A); delete a key set of an SSD
    isd = HostSession(card.transmit).open()
    assert isd.send(c.install_for_personalization(app))[1] == 0x6A88
    a = HostSession(card.transmit, ssd_a).open()
    a.ok(c.install_for_personalization(app))
    a.ok(c.store_data(bytes.fromhex("0101020A0B"), 0, last=False, flags=c.STORE_DATA_DGI))
    a.ok(c.store_data(bytes.fromhex("0102FF0001CC"), 1, last=True, flags=c.STORE_DATA_DGI))
    assert card.personalization(app) == bytes.fromhex("0101020A0B0102FF0001CC")
    assert a.send(c.delete_key(kvn=0x31))[1] == 0x6A88
    a.ok(c.delete_key(kvn=0x30))
    card.transmit(c.select(ssd_a))
    from gp.scp import SCP03

    ch = SCP03(StaticKeys.single(bytes.fromhex("404142434445464748494A4B4C4D4E4F"), 0x30), 0x33)
    assert sw_of(card.transmit(ch.initialize_update())) == 0x6A88  # key set gone
    check_consistency(card.state)
