"""``cardsim init --manufacturer-file FILE --line N``: the card of one line of a manufacturer's
personalisation file holds exactly that line's identity and keys (docs/manufacturer-file.md);
``cardsim make-manufacturer-file`` writes such a file."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cardsim.cli import main
from cardsim.transport import InProcessCard
from gp import commands as c
from gp import manufacturer_file as mf
from gp.aids import ISD_AID
from gp.errors import GPError
from tests.cardsim.hostlib import HostSession

ISD = ISD_AID.hex().upper()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, bytes, list[mf.CardKeys]]:
    transport = secrets.token_bytes(16)
    key_file = tmp_path / "transport.hex"
    key_file.write_text(transport.hex() + "\n")
    token = ec.generate_private_key(ec.SECP256R1()).public_key()
    token_pem = tmp_path / "token.pem"
    token_pem.write_bytes(
        token.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    der = token.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cards = mf.random_cards(2) + mf.random_cards(1, scp=0x02)
    data = mf.write(
        cards, transport_key=transport, manufacturer="Acme", iin="4543415244", token_key_sha256=mf.token_key_sha256(der)
    )
    path = tmp_path / "acme.jsonl"
    path.write_bytes(data)
    return path, key_file, token_pem, transport, cards


def init_args(state: Path, path: Path, key_file: Path, token_pem: Path, line: int) -> list[str]:
    return [
        "init",
        str(state),
        "--manufacturer-file",
        str(path),
        "--line",
        str(line),
        "--transport-key-file",
        str(key_file),
        "--token-key",
        str(token_pem),
    ]


@pytest.mark.parametrize("index", [1, 2])  # an SCP03 card, an SCP02 card
def test_the_card_of_a_line_holds_that_line(setup, tmp_path: Path, index: int) -> None:
    path, key_file, token_pem, _transport, cards = setup
    line = cards[index]
    state_path = tmp_path / "card.json"
    assert main(init_args(state_path, path, key_file, token_pem, index + 2)) == 0
    state = json.loads(state_path.read_text())
    assert (state["cin"], state["kdd"], state["iin"]) == (line.cin, line.kdd, "4543415244")
    assert state["cplc"] == line.cplc.to_bytes().hex().upper()
    assert state["ssd_initial_key"] == line.ssd_initial_key.hex().upper()
    isd_keys = state["sds"][ISD]["keys"]
    assert sorted(isd_keys) == sorted([f"{line.isd_keys.version:02X}", "70", "71"])
    assert isd_keys["71"]["keys"] == [line.receipt_key.hex().upper()]

    card = InProcessCard(state_path)
    card.reset()
    session = HostSession(card.transmit, scp=line.scp, kvn=line.isd_keys.version)
    session.keys = line.isd_keys  # the line's own ENC/MAC/DEK, not diversified
    session.open()
    cplc = session.ok(c.get_data(c.TAG_CPLC))
    assert c.parse_cplc(cplc) == line.cplc


def test_other_keys_do_not_open_the_card(setup, tmp_path: Path) -> None:
    path, key_file, token_pem, _transport, cards = setup
    state_path = tmp_path / "card.json"
    assert main(init_args(state_path, path, key_file, token_pem, 2)) == 0
    card = InProcessCard(state_path)
    card.reset()
    session = HostSession(card.transmit, kvn=cards[0].isd_keys.version)
    session.keys = cards[1].isd_keys  # another card's keys, same KVN
    assert cards[1].isd_keys.version == cards[0].isd_keys.version
    with pytest.raises((AssertionError, GPError)):
        session.open()


def test_init_refuses_a_wrong_token_key_a_wrong_transport_key_and_a_non_card_line(
    setup, tmp_path: Path, capsys
) -> None:
    path, key_file, token_pem, _transport, _cards = setup
    state_path = tmp_path / "card.json"
    other_pem = tmp_path / "other.pem"
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_pem.write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert main(init_args(state_path, path, key_file, other_pem, 2)) == 2
    assert "not the token verification key" in capsys.readouterr().err
    wrong = tmp_path / "wrong.hex"
    wrong.write_text(secrets.token_hex(16))
    assert main(init_args(state_path, path, wrong, token_pem, 2)) == 2
    assert "line 1: transport_kcv" in capsys.readouterr().err
    assert main(init_args(state_path, path, key_file, token_pem, 1)) == 2
    assert "line 1 of" in capsys.readouterr().err
    assert not state_path.exists()


def test_make_manufacturer_file_writes_a_file_the_reader_accepts(tmp_path: Path) -> None:
    transport = secrets.token_bytes(32)
    key_file = tmp_path / "transport.hex"
    key_file.write_text(transport.hex())
    token = ec.generate_private_key(ec.SECP256R1()).public_key()
    token_pem = tmp_path / "token.pem"
    token_pem.write_bytes(
        token.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    out = tmp_path / "made.jsonl"
    args = ["make-manufacturer-file", str(out), "--cards", "4", "--transport-key-file", str(key_file)]
    assert main([*args, "--token-key", str(token_pem), "--scp", "02"]) == 0
    parsed = mf.read(out.read_bytes(), transport)
    assert len(parsed.cards) == 4 and {card.scp for card in parsed.cards} == {0x02}
    der = token.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert parsed.header.token_key_sha256 == mf.token_key_sha256(der)


@pytest.mark.parametrize("length", [16, 24, 32])
def test_the_files_check_values_are_gps(length: int) -> None:
    from gp.keys import kcv_aes, kcv_des

    key = secrets.token_bytes(length)
    assert mf.kcv("aes", key) == kcv_aes(key).hex().upper()
    if length == 16:
        assert mf.kcv("3des", key) == kcv_des(key).hex().upper()
