"""The CLI contract (DESIGN §8): init / show (serve is exercised in test_pcsc.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cardsim.cli import main
from cardsim.transport import InProcessCard
from gp import commands as c
from gp import dm
from gp.aids import ISD_AID
from gp.keys import diversify
from gp.scp import SCP02, SCP03
from tests.cardsim.hostlib import HostSession, sw_of

MASTER = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
ISD = ISD_AID.hex().upper()  # the key of the ISD in the card state file


def test_init_defaults_scp03(tmp_path: Path, capsys) -> None:
    path = tmp_path / "card.json"
    assert main(["init", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = json.loads(path.read_text())
    assert state["lifecycle"] == c.CARD_SECURED
    assert state["sds"][ISD]["scp"] == 3 and state["sds"][ISD]["i"] == 0x70
    HostSession(InProcessCard(path).transmit).open()  # 404142..4F at KVN 30, SCP03
    assert main(["init", str(path)]) == 2  # never overwrites a card by accident
    assert main(["init", str(path), "--force", "--scp", "02"]) == 0
    card = InProcessCard(path)
    HostSession(card.transmit, scp=2).open()  # same key, 3DES, KVN 20, i=55
    assert c.parse_fci(card.transmit(c.select())[:-2]).card_data.scp == ((2, 0x55),)


def test_init_custom_key_kvn_cin(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    key = bytes(range(32))
    assert (
        main(
            [
                "init",
                str(path),
                "--key",
                key.hex(),
                "--kvn",
                "3F",
                "--cin",
                "AABBCCDDEEFF0011",
                "--iin",
                "4242",
                "--memory",
                "65536",
                "--auth-limit",
                "5",
            ]
        )
        == 0
    )
    card = InProcessCard(path)
    HostSession(card.transmit, key=key, kvn=0x3F).open()
    card.transmit(c.select())  # ends the session: GET DATA in clear is fine outside it
    assert c.tagged_value(card.transmit(c.get_data(0x45))[:-2], 0x45) == bytes.fromhex("AABBCCDDEEFF0011")
    assert card.state["auth_limit"] == 5 and card.state["memory_total"] == 65536


@pytest.mark.parametrize(("scheme", "scp"), [("kdf3", "03"), ("emv", "02"), ("visa2", "02")])
def test_diversified_isd_keys(tmp_path: Path, scheme: str, scp: str) -> None:
    path = tmp_path / "card.json"
    assert (
        main(
            ["init", str(path), "--scp", scp, "--key", MASTER.hex(), "--diversify", scheme, "--cin", "0011223344556677"]
        )
        == 0
    )
    card = InProcessCard(path)
    card.transmit(c.select())
    # the platform learns the KDD from INITIALIZE UPDATE (or GET DATA CF) and diversifies the master key
    kdd = c.parse_kdd(card.transmit(c.get_data(c.TAG_KDD))[:-2])
    keys = diversify(scheme, MASTER, kdd, 0x30 if scp == "03" else 0x20)
    ch = SCP03(keys, 0x33) if scp == "03" else SCP02(keys, 0x03)
    r = card.transmit(ch.initialize_update())
    assert r[:10] == kdd
    assert sw_of(card.transmit(ch.external_authenticate(r))) == 0x9000


def test_token_and_receipt_keys_and_show_hides_keys(tmp_path: Path, capsys) -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "token.pem"
    pem.write_bytes(
        priv.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "card.json"
    receipt = "00112233445566778899AABBCCDDEEFF"
    assert (
        main(
            [
                "init",
                str(path),
                "--token-key",
                str(pem),
                "--receipt-key",
                receipt,
                "--behaviour",
                "A0000005590101=bank-version",
            ]
        )
        == 0
    )
    state = json.loads(path.read_text())
    assert state["token_scheme"] == dm.SCHEME_ECDSA_P256_SHA256
    assert set(state["sds"][ISD]["keys"]) == {"30", "70", "71"}
    assert state["behaviours"] == {"A0000005590101": "bank-version"}
    capsys.readouterr()
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"ISD: {ISD} (SECURED)" in out
    assert "KVN 70 EC P-256 public (token verification)" in out and "KVN 71 AES-128 x1 (receipt)" in out
    assert "PKG: A0000000620101 (LOADED) v1.6 ROM javacard.framework" in out
    assert receipt not in out.upper() and "404142434445464748494A4B4C4D4E4F" not in out.upper()


def test_show_rejects_a_non_card_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["show", str(bad)]) == 1
    assert "not a cardsim state file" in capsys.readouterr().err


def test_init_without_elf_upgrade_and_with_mandated_dap(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    assert main(["init", str(path)]) == 0
    s = HostSession(InProcessCard(path).transmit).open()
    assert c.supports_elf_upgrade(s.ok(c.get_data(c.TAG_CARD_CAPABILITIES)))
    assert c.Privileges.MANDATED_DAP_VERIFICATION not in next(iter(s.status(c.STATUS_ISD))).privileges
    assert main(["init", str(path), "--force", "--no-elf-upgrade", "--mandated-dap"]) == 0
    s = HostSession(InProcessCard(path).transmit).open()
    assert not c.supports_elf_upgrade(s.ok(c.get_data(c.TAG_CARD_CAPABILITIES)))
    assert s.send(c.upgrade_status())[1] == 0x6D00
    isd = next(iter(s.status(c.STATUS_ISD)))
    assert c.Privileges.MANDATED_DAP_VERIFICATION in isd.privileges and c.Privileges.DAP_VERIFICATION in isd.privileges
