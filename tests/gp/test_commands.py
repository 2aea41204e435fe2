"""GlobalPlatform command builders and response parsers (gp.commands)."""

from __future__ import annotations

import pytest

from gp import commands as c
from gp.aids import ISD_AID
from gp.apdu import CommandAPDU
from gp.errors import EncodingError, GPError, LoadError, TLVError
from gp.tlv import encode_tlv as T

ISD = ISD_AID
PKG = bytes.fromhex("0102030405")
APP = bytes.fromhex("0102030405060708")
SSD_PKG = bytes.fromhex("A0000001515350")
SSD_MOD = bytes.fromhex("A000000151535041")


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


# --- SELECT / FCI ---------------------------------------------------------------------------


def test_select() -> None:
    assert c.select(ISD) == h("00A40400 08 A000000151000000 00")
    assert c.select(ISD, next_occurrence=True) == h("00A40402 08 A000000151000000 00")
    assert c.select() == h("00A40400 00")
    with pytest.raises(EncodingError):
        c.select(b"\x01\x02")


def test_parse_fci() -> None:
    crd = T(0x73, T(0x06, h("2A864886FC6B01")) + T(0x60, T(0x06, h("2A864886FC6B02020301"))))
    a5 = T(0xA5, crd + T(0x9F6E, h("479100780300")) + T(0x9F65, h("FF")))
    fci = c.parse_fci(T(0x6F, T(0x84, ISD) + a5))
    assert fci.aid == ISD
    assert fci.max_command_data_length == 255
    assert fci.application_production_lifecycle == h("479100780300")
    assert fci.card_data is not None and fci.card_data.gp_version == (2, 3, 1)
    with pytest.raises(TLVError):
        c.parse_fci(T(0x6F, T(0xA5, b"")))
    with pytest.raises(TLVError):
        c.parse_fci(h("9000"))


# --- GET DATA -------------------------------------------------------------------------------


def test_get_data() -> None:
    assert c.get_data(c.TAG_CPLC) == h("80CA9F7F00")
    assert c.get_data(c.TAG_IIN, cla=0x00) == h("00CA004200")
    assert c.get_data(c.TAG_KEY_INFO) == h("80CA00E000")
    assert c.tagged_value(h("4206 123456789012"), 0x42) == h("123456789012")
    assert c.tagged_value(h("4508 0102030405060708"), 0x45) == h("0102030405060708")
    assert c.parse_sequence_counter(h("C1 03 00002A")) == 42
    assert c.parse_kdd(h("CF0A 00010203040506070809")) == bytes(range(10))
    with pytest.raises(TLVError):
        c.tagged_value(h("4201AA"), 0x45)


def test_cplc() -> None:
    value = bytes(range(1, 43))
    cplc = c.parse_cplc(T(0x9F7F, value))
    assert cplc.ic_fabricator == h("0102") and cplc.ic_type == h("0304") and cplc.os_id == h("0506")
    assert cplc.os_release_date == h("0708") and cplc.os_release_level == h("090A")
    assert cplc.ic_fabrication_date == h("0B0C")
    assert cplc.ic_serial_number == h("0D0E0F10")
    assert cplc.ic_batch_identifier == h("1112")
    assert cplc.ic_personalization_equipment_id == h("272829 2A")
    assert cplc.to_bytes() == value
    assert c.parse_cplc(value) == cplc
    with pytest.raises(TLVError):
        c.parse_cplc(T(0x9F7F, value[:-1]))
    assert c.parse_cplc(T(0x9F7F, value + b"\x00\x00")) == cplc  # trailing bytes some cards add


def test_card_data() -> None:
    crd = (
        T(0x06, h("2A864886FC6B01"))
        + T(0x60, T(0x06, h("2A864886FC6B02020201")))
        + T(0x63, T(0x06, h("2A864886FC6B03")))
        + T(0x64, T(0x06, h("2A864886FC6B040370")))
        + T(0x66, T(0x06, h("2B060104012A026E0103")))
    )
    cd = c.parse_card_data(T(0x66, T(0x73, crd)))
    assert cd.gp_version == (2, 2, 1) and cd.gp_version_str == "2.2.1"
    assert cd.scp == ((3, 0x70),)
    assert cd.card_identification_scheme == (1, 2, 840, 114283, 3)
    assert cd.oids[0x06] == (1, 2, 840, 114283, 1)
    assert cd.oids[0x66] == (1, 3, 6, 1, 4, 1, 42, 2, 110, 1, 3)
    with pytest.raises(TLVError):
        c.parse_card_data(T(0x67, b""))


def test_key_information() -> None:
    data = T(0xE0, T(0xC0, h("01308810")) + T(0xC0, h("02308810")) + T(0xC0, h("03308810")) + T(0xC0, h("01208010")))
    keys = c.parse_key_information(data)
    assert [(k.kvn, k.key_id, k.key_type, k.key_length) for k in keys] == [
        (0x30, 1, 0x88, 16),
        (0x30, 2, 0x88, 16),
        (0x30, 3, 0x88, 16),
        (0x20, 1, 0x80, 16),
    ]
    assert keys[0].type_name == "AES"
    # a fresh SD may report an empty C0 placeholder
    assert c.parse_key_information(T(0xE0, T(0xC0, b"") + T(0xC0, h("01308810"))))[0].kvn == 0x30
    ext = c.parse_key_information(T(0xE0, T(0xC0, h("0170 FF880010 FF880010 0100 00"))))
    assert ext[0].components == ((0x88, 16), (0x88, 16)) and ext[0].usage == b"\x00"
    with pytest.raises(TLVError):
        c.parse_key_information(T(0xE0, T(0xC0, h("0130"))))


# --- Privileges and life cycles -------------------------------------------------------------


def test_privileges() -> None:
    p = c.Privileges.from_bytes(h("A00000"))
    assert p == c.Privileges.SECURITY_DOMAIN | c.Privileges.DELEGATED_MANAGEMENT
    assert p.to_bytes() == h("A00000")
    assert c.Privileges.from_bytes(h("80")) == c.Privileges.SECURITY_DOMAIN
    every = c.Privileges.from_bytes(h("FFFFF0"))
    assert len(every.names) == 20
    assert c.Privileges.RECEIPT_GENERATION.to_bytes() == h("000080")
    assert c.Privileges.TOKEN_VERIFICATION.to_bytes() == h("002000")
    assert c.Privileges.AUTHORIZED_MANAGEMENT.to_bytes() == h("004000")
    assert c.Privileges.CONTACTLESS_SELF_ACTIVATION.to_bytes() == h("000010")
    with pytest.raises(EncodingError):
        c.Privileges.from_bytes(h("0000"))


@pytest.mark.parametrize(
    ("kind", "value", "name"),
    [
        ("card", 0x01, "OP_READY"),
        ("card", 0x07, "INITIALIZED"),
        ("card", 0x0F, "SECURED"),
        ("card", 0x7F, "CARD_LOCKED"),
        ("card", 0xFF, "TERMINATED"),
        ("elf", 0x01, "LOADED"),
        ("app", 0x03, "INSTALLED"),
        ("app", 0x07, "SELECTABLE"),
        ("app", 0x83, "LOCKED"),
        ("sd", 0x0F, "PERSONALIZED"),
        ("sd", 0x8F, "LOCKED"),
        ("sd", 0x07, "SELECTABLE"),
    ],
)
def test_lifecycle_names(kind: str, value: int, name: str) -> None:
    assert c.lifecycle_name(kind, value) == name


# --- GET STATUS -----------------------------------------------------------------------------


def test_get_status_command() -> None:
    assert c.get_status(c.STATUS_APPS) == h("80F24002 02 4F00 00")
    assert c.get_status(c.STATUS_ISD) == h("80F28002 02 4F00 00")
    assert c.get_status(c.STATUS_ELF_MODULES, next_occurrence=True) == h("80F21003 02 4F00 00")
    assert c.get_status(c.STATUS_ELF, tag_format=False) == h("80F22000 02 4F00 00")
    assert c.get_status(c.STATUS_APPS, aid_filter=PKG) == h("80F24002 07 4F050102030405 00")
    with pytest.raises(EncodingError):
        c.get_status(0x41)
    assert c.get_status_next(c.STATUS_APPS, 0x6310) == h("80F24003 02 4F00 00")
    assert c.get_status_next(c.STATUS_APPS, 0x9000) is None


def test_parse_get_status_tagged() -> None:
    ssd = bytes.fromhex("A00000015153504101")
    apps = T(0xE3, T(0x4F, ssd) + T(0x9F70, h("0F")) + T(0xC5, h("A08000")) + T(0xC4, SSD_PKG) + T(0xCC, ISD)) + T(
        0xE3, T(0x4F, APP) + T(0x9F70, h("07")) + T(0xC5, h("000000")) + T(0xC4, PKG) + T(0xCC, ssd)
    )
    entries = c.parse_get_status(apps, c.STATUS_APPS)
    assert [e.aid for e in entries] == [ssd, APP]
    sd, app = entries
    assert sd.kind == "sd" and sd.is_security_domain and sd.lifecycle_name == "PERSONALIZED"
    assert c.Privileges.DELEGATED_MANAGEMENT in sd.privileges  # type: ignore[operator]
    assert c.Privileges.TRUSTED_PATH in sd.privileges  # type: ignore[operator]
    assert sd.associated_sd_aid == ISD and sd.elf_aid == SSD_PKG
    assert app.kind == "app" and app.lifecycle_name == "SELECTABLE" and app.associated_sd_aid == ssd
    elfs = T(
        0xE3,
        T(0x4F, PKG)
        + T(0x9F70, h("01"))
        + T(0xCE, h("0100"))
        + T(0x84, APP)
        + T(0x84, APP[:7])
        + T(0xCC, ISD)
        + T(0xCF, h("01")),
    )
    (elf,) = c.parse_get_status(elfs, c.STATUS_ELF_MODULES)
    assert elf.kind == "elf" and elf.lifecycle_name == "LOADED" and elf.elf_version == h("0100")
    assert elf.modules == (APP, APP[:7]) and elf.privileges is None and elf.implicit_selection == (h("01"),)
    (isd,) = c.parse_get_status(T(0xE3, T(0x4F, ISD) + T(0x9F70, h("0F")) + T(0xC5, h("9EFE80"))), 0x80)
    assert isd.kind == "card" and isd.lifecycle_name == "SECURED"
    with pytest.raises(TLVError):
        c.parse_get_status(T(0xE3, T(0x9F70, h("07"))))
    with pytest.raises(TLVError):
        c.parse_get_status(T(0x4F, ISD))


def test_parse_get_status_legacy() -> None:
    data = h("08 A000000151000000 0F 9E") + h("08 0102030405060708 07 00")
    entries = c.parse_get_status_legacy(data, c.STATUS_APPS)
    assert entries[0].aid == ISD and entries[0].privileges == c.Privileges.from_bytes(h("9E"))
    assert entries[1].lifecycle == 0x07
    mods = c.parse_get_status_legacy(h("05 0102030405 01 00 02 08 0102030405060708 05 0102030406"), 0x10)
    assert mods[0].modules == (APP, h("0102030406")) and mods[0].kind == "elf"
    with pytest.raises(TLVError):
        c.parse_get_status_legacy(h("08 A0000001"), c.STATUS_APPS)


# --- INSTALL --------------------------------------------------------------------------------


def test_install_for_load() -> None:
    assert c.install_for_load(PKG, ISD) == h("80E60200 12 05 0102030405 08 A000000151000000 00 00 00 00")
    digest = bytes(32)
    cmd = c.install_for_load(PKG, ISD, digest, c.load_parameters(nv_code=0x1000))
    assert CommandAPDU.from_bytes(cmd).data == (
        h("05 0102030405 08 A000000151000000 20") + digest + h("06 EF04 C6021000") + h("00")
    )


def test_install_for_install() -> None:
    params = c.install_parameters(c.sd_install_parameters(0x03, 0x70))
    assert params == h("C904 81020370")
    cmd = c.install_for_install(
        SSD_PKG, SSD_MOD, APP, c.Privileges.SECURITY_DOMAIN | c.Privileges.DELEGATED_MANAGEMENT, params
    )
    assert cmd == h("80E60C00 26 07A0000001515350 08A000000151535041 080102030405060708 03A00000 06C9048102037000 00")
    only_install = c.install_for_install(PKG, APP, privileges=b"\x00", make_selectable=False)
    assert only_install[:4] == h("80E60400")
    assert CommandAPDU.from_bytes(only_install).data == h(
        "05 0102030405 08 0102030405060708 08 010203040506070801 00 02 C900 00"
    )
    quotas = c.install_parameters(b"\x01", volatile_quota=0x100, nv_quota=0x2000)
    assert quotas == h("C90101 EF08 C7020100 C8022000")


def test_install_variants() -> None:
    assert c.install_for_make_selectable(APP) == h("80E60800 0F 0000 08 0102030405060708 01 00 00 00 00")
    assert c.install_for_personalization(APP) == h("80E62000 0E 0000 08 0102030405060708 000000 00")
    assert c.install_for_extradition(ISD, APP) == h("80E61000 16 08A000000151000000 00 080102030405060708 00 00 0000")
    assert c.install_for_registry_update(APP, ISD, h("800000")) == h(
        "80E64000 19 08A000000151000000 00 080102030405060708 03800000 00 00 00"
    )
    long_token = bytes(250)
    with pytest.raises(EncodingError):
        c.install_for_load(PKG, ISD, bytes(32), b"", long_token)  # > 255 bytes: not short
    cmd = CommandAPDU.from_bytes(c.install_for_make_selectable(APP, token=bytes(128)))
    assert cmd.data.endswith(h("8180") + bytes(128))  # BER length for 128..255 (§11.5.2.3: 1-3 bytes)


def _parse(cmd: bytes) -> c.InstallCommand:
    capdu = CommandAPDU.from_bytes(cmd)
    return c.parse_install(capdu.p1, capdu.data)


def test_parse_install_round_trips() -> None:
    tok = bytes(range(130))
    p = _parse(c.install_for_load(PKG, ISD, bytes(32), c.load_parameters(nv_code=10), tok))
    assert (p.kind, p.elf_aid, p.sd_aid, p.lfdb_hash, p.token) == ("load", PKG, ISD, bytes(32), tok)
    assert p.params == h("EF04 C602000A")
    p = _parse(c.install_for_install(PKG, APP, APP + b"\x01", h("800000"), h("C900"), tok))
    assert (p.kind, p.elf_aid, p.module_aid, p.app_aid, p.privileges, p.params, p.token) == (
        "install_and_make_selectable",
        PKG,
        APP,
        APP + b"\x01",
        h("800000"),
        h("C900"),
        tok,
    )
    assert _parse(c.install_for_install(PKG, APP, make_selectable=False)).kind == "install"
    p = _parse(c.install_for_make_selectable(APP, h("04"), token=b"t"))
    assert (p.kind, p.app_aid, p.privileges, p.token) == ("make_selectable", APP, h("04"), b"t")
    p = _parse(c.install_for_extradition(ISD, APP, token=b"t"))
    assert (p.kind, p.sd_aid, p.app_aid, p.token) == ("extradition", ISD, APP, b"t")
    p = _parse(c.install_for_registry_update(APP, ISD, h("000000")))
    assert (p.kind, p.sd_aid, p.app_aid, p.privileges) == ("registry_update", ISD, APP, h("000000"))
    p = _parse(c.install_for_personalization(APP))
    assert (p.kind, p.app_aid) == ("personalization", APP)
    for bad in (h("05 01020304"), h("05 0102030405 00 00 00 00 FF"), h("")):
        with pytest.raises(EncodingError):
            c.parse_install(0x02, bad)
    with pytest.raises(EncodingError):
        c.parse_install(0x80, h("00"))


def test_parse_delete() -> None:
    d = c.parse_delete(CommandAPDU.from_bytes(c.delete(APP, token=b"tok")).data)
    assert (d.aid, d.token, d.kvn) == (APP, b"tok", None)
    d = c.parse_delete(CommandAPDU.from_bytes(c.delete_key(kvn=0x30, key_id=2)).data)
    assert (d.aid, d.key_id, d.kvn) == (b"", 2, 0x30)
    for bad in (h("9E0100"), h("4F01AA 4F01BB"), h("4F01AA D00101"), h("D2020101"), h("C001AA")):
        with pytest.raises(EncodingError):
            c.parse_delete(bad)


# --- LOAD -----------------------------------------------------------------------------------


def _reassemble(cmds: list[bytes]) -> bytes:
    return b"".join(CommandAPDU.from_bytes(x).data for x in cmds)


def test_load_commands_basic() -> None:
    lfdb = bytes(range(256)) * 4
    cmds = c.load_commands(lfdb, 239)
    assert len(cmds) == 5
    parsed = [CommandAPDU.from_bytes(x) for x in cmds]
    assert [(p.cla, p.ins) for p in parsed] == [(0x80, 0xE8)] * 5
    assert [p.p1 for p in parsed] == [0, 0, 0, 0, 0x80]
    assert [p.p2 for p in parsed] == [0, 1, 2, 3, 4]
    assert _reassemble(cmds) == h("C4820400") + lfdb
    assert all(len(p.data) <= 239 for p in parsed)


def test_load_with_dap_block() -> None:
    lfdb = b"\x01\x00\x00"
    cmds = c.load_commands(lfdb, 223, dap_blocks=[(ISD, bytes(8))])
    assert _reassemble(cmds) == h("E214 4F08A000000151000000 C8080000000000000000".replace("C808", "C308")) + h(
        "C403010000"
    )


def test_load_too_many_blocks() -> None:
    lfdb = bytes(239 * 256)  # + 4 bytes of C4 header -> 257 blocks
    with pytest.raises(LoadError, match="256"):
        c.load_commands(lfdb, 239)
    assert len(c.load_commands(bytes(239 * 256 - 4), 239)) == 256
    with pytest.raises(LoadError):
        c.plan_load(lfdb, 239, 4096, extended_ok=False)
    plan = c.plan_load(lfdb, 239, 4096, extended_ok=True)
    assert plan.extended and plan.block_size == 4096 and plan.blocks == 15
    cmds = c.load_commands(lfdb, plan.block_size, extended_ok=True)
    assert len(cmds) == 15 and _reassemble(cmds) == h("C482EF00") + lfdb
    assert CommandAPDU.from_bytes(cmds[0]).is_extended
    assert c.plan_load(b"\x00" * 100, 239, 4096, True) == c.LoadPlan(239, False, 1)
    with pytest.raises(LoadError):
        c.load_commands(lfdb, 4096)  # extended not allowed
    with pytest.raises(LoadError):
        c.plan_load(bytes(70000), 239, 255, extended_ok=True)


# --- DELETE, SET STATUS, STORE DATA, PUT KEY ------------------------------------------------


def test_delete() -> None:
    assert c.delete(PKG) == h("80E40000 07 4F050102030405 00")
    assert c.delete(PKG, related=True) == h("80E40080 07 4F050102030405 00")
    assert c.delete(PKG, token=bytes(2)) == h("80E40000 0B 4F050102030405 9E020000 00")
    assert c.delete_key(kvn=0x30, key_id=1) == h("80E40000 06 D00101 D20130 00")
    assert c.delete_key(kvn=0x30) == h("80E40000 03 D20130 00")
    with pytest.raises(EncodingError):
        c.delete_key()


def test_set_status() -> None:
    assert c.set_status(c.SET_STATUS_ISD, c.CARD_LOCKED) == h("80F0807F")
    assert c.set_status(c.SET_STATUS_APP, 0x80, APP) == h("80F04080 08 0102030405060708")  # lock
    assert c.set_status(c.SET_STATUS_APP, 0x00, APP) == h("80F04000 08 0102030405060708")  # unlock
    assert c.set_status(c.SET_STATUS_SD_AND_APPS, 0x8F, ISD)[:4] == h("80F0608F")
    with pytest.raises(EncodingError):
        c.set_status(c.SET_STATUS_ISD, 0x7F, ISD)
    with pytest.raises(EncodingError):
        c.set_status(c.SET_STATUS_APP, 0x83)


def test_store_data() -> None:
    cmds = c.store_data_commands(bytes(300), max_block=200, flags=c.STORE_DATA_DGI)
    p = [CommandAPDU.from_bytes(x) for x in cmds]
    assert [(x.p1, x.p2, len(x.data)) for x in p] == [(0x08, 0, 200), (0x88, 1, 100)]
    blocks = c.store_data_commands([h("0101020304"), h("8010" + "00" * 16)], flags=c.STORE_DATA_DGI | c.STORE_DATA_ENC)
    assert [CommandAPDU.from_bytes(x).p1 for x in blocks] == [0x68, 0xE8]
    assert c.store_data(h("AA"), 3, last=True, flags=c.STORE_DATA_BER) == h("80E29003 01 AA 00")


def test_put_key() -> None:
    key_data = h("88 11 10" + "00" * 16 + "03 AABBCC") * 3
    cmd = c.put_key(0x31, key_data, old_kvn=0x30)
    assert cmd[:4] == h("80D83081")
    assert CommandAPDU.from_bytes(cmd).data == b"\x31" + key_data
    assert c.put_key(0x30, b"", key_id=1, multiple=False)[:4] == h("80D80001")
    with pytest.raises(EncodingError):
        c.put_key(0x80, b"")


def test_errors_are_gp_errors() -> None:
    for exc in (EncodingError, TLVError, LoadError):
        assert issubclass(exc, GPError)


def test_isd_aid_is_globalplatforms_default() -> None:
    """The ISD AID against the spec (GP 2.3.1 Table F-1, RID A000000151). Other tests use gp.aids.ISD_AID;
    the AID bytes left inside their hex are whole encoded APDUs and TLVs, kept as known answers."""
    assert bytes.fromhex("A000000151000000") == ISD_AID
