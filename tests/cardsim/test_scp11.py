"""SCP11 on the emulated card (GPC Amendment F), driven by gp's host over the card's wire.

``init --scp 11`` gives the ISD an SCP11b key certified through the card's attestation key; an
SSD installed with ``81 02 11 i`` generates its own key pair and holds no shared key. The bank
opens it with SCP11b, puts its SCP03 keys inside that session, and from then on SCP03 opens it.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardsim import scp11, store
from cardsim.card import Card
from cardsim.cli import main as cardsim_main
from cardsim.constants import DEFAULT_KEY
from cardsim.state import new_state
from cardsim.transport import InProcessCard
from gp import commands as c
from gp.aids import ISD_AID, SSD_MODULE_AID, SSD_PACKAGE_AID
from gp.apdu import SW
from gp.keys import StaticKeys, encode_put_key_ec_p256, encode_put_key_ec_private
from gp.scp11 import (
    CertificateAuthority,
    Curve,
    KeyPair,
    KeyUsage,
    SCP11a,
    SCP11b,
    SCP11c,
    parse_certificates,
    verify_chain,
)
from gp.tlv import decode_all, decode_one
from tests.cardsim.hostlib import HostSession
from tests.cardsim.scp11_host import (
    TODAY,
    SCP11Session,
    certificate_store,
    issuer_anchor,
    key_identifier,
    oce_certificate,
    sd_point,
    sw_of,
)

SSD = bytes.fromhex("A000000151535344424B01")
BANK_KEYS = StaticKeys(b"\x11" * 16, b"\x22" * 16, b"\x33" * 16, 0x30)
OCE_KID, OCE_KVN = 0x10, 0x03


@pytest.fixture
def card(tmp_path: Path) -> InProcessCard:
    path = tmp_path / "card.json"
    assert cardsim_main(["init", str(path), "--scp", "11", "--cin", "0A0B0C0D0E0F1011"]) == 0
    return InProcessCard(path)


def install_scp11_ssd(card: InProcessCard, aid: bytes = SSD) -> int:
    isd = HostSession(card.transmit).open()
    params = c.install_parameters(c.sd_install_parameters(0x11, 0x00))
    _, sw = isd.install(SSD_PACKAGE_AID, SSD_MODULE_AID, aid, privileges=b"\x80", params=params)
    return sw


def scp11b(card: InProcessCard, aid: bytes = SSD, kvn: int = 0x01) -> SCP11Session:
    point = sd_point(card.transmit, aid, issuer_anchor(card.state), kvn=kvn)
    return SCP11Session(card.transmit, aid, SCP11b(point, kvn))


def get_data(transmit: object, tag: int) -> bytes:
    send = transmit  # a plain transmit, before any session
    answer = send(c.get_data(tag))  # type: ignore[operator]
    assert sw_of(answer) == SW.SUCCESS, answer[-2:].hex()
    return bytes(answer[:-2])


# ------------------------------------------------------------------ init --scp 11 (DESIGN §8)


def test_init_scp11_gives_the_isd_a_certified_scp11b_key_beside_its_scp03_keys(card: InProcessCard) -> None:
    info = decode_one(get_data(card.transmit, 0xE0))[0]
    entries = [t.value for t in decode_all(info.value)]
    assert bytes((0x13, 0x01, 0xB1, 32, 0xF0, 1)) in entries  # SCP11b key: KID 13 KVN 01, B1 (32 bytes), F0
    assert bytes((0x01, 0x30, 0x88, 16)) in entries  # the SCP03 keys stay
    chain = parse_certificates(certificate_store(card.transmit, ISD_AID))
    assert len(chain) == 2  # the card's attestation certificate, then CERT.SD.ECKA
    leaf = verify_chain(chain, issuer_anchor(card.state), TODAY, KeyUsage.KEY_AGREEMENT)
    assert leaf.public_key_point[0] == 0x04 and len(leaf.public_key_point) == 65
    crd = get_data(card.transmit, 0x66)
    assert bytes.fromhex("2A864886FC6B040370") in crd  # SCP03 i=70
    assert bytes.fromhex("2A864886FC6B041100") in crd  # SCP11 i=00 (Amd F §5.1)


def test_scp11b_opens_the_isd_reads_but_may_not_change_a_personalised_domain(card: InProcessCard) -> None:
    session = scp11b(card, ISD_AID)
    assert session.open() == SW.SUCCESS
    data, sw = session.send(c.get_data(0x45))
    assert sw == SW.SUCCESS and data.endswith(bytes.fromhex("0A0B0C0D0E0F1011"))
    # SCP11b authenticates the card only: no key goes into the ISD that way.
    _, sw = session.put_scp03_keys(StaticKeys(b"\x01" * 16, b"\x02" * 16, b"\x03" * 16, 0x31))
    assert sw == SW.SECURITY_STATUS_NOT_SATISFIED
    assert "31" not in card.state["sds"][ISD_AID.hex().upper()]["keys"]


def test_a_card_without_scp11_keys_does_not_answer_the_handshake(tmp_path: Path) -> None:
    path = tmp_path / "plain.json"
    assert cardsim_main(["init", str(path)]) == 0
    plain = InProcessCard(path)
    assert sw_of(plain.transmit(c.select(ISD_AID))) == SW.SUCCESS
    host = SCP11b(KeyPair.generate().public_point, 0x01)
    assert sw_of(plain.transmit(host.internal_authenticate())) == SW.INS_NOT_SUPPORTED


# ------------------------------------------------------------------ an SSD installed for SCP11


def test_an_ssd_installed_for_scp11_generates_its_key_and_holds_no_shared_secret(card: InProcessCard) -> None:
    assert install_scp11_ssd(card) == SW.SUCCESS
    record = card.state["sds"][SSD.hex().upper()]
    assert record["scp"] == 0x11 and record["keys"] == {}  # no initial key to rotate away
    assert list(record["scp11"]["keys"]) == ["13/01"]
    # Nobody opens it with the card's initial SCP03 key: there is none.
    assert sw_of(card.transmit(c.select(SSD))) == SW.SUCCESS
    from gp.scp import SCP03

    host = SCP03(StaticKeys.single(DEFAULT_KEY, 0x30), 0x33, sd_aid=SSD)
    assert sw_of(card.transmit(host.initialize_update())) == SW.REFERENCED_DATA_NOT_FOUND
    # Its certificate is the card's: the chain ends at the card issuer CA.
    chain = parse_certificates(certificate_store(card.transmit, SSD))
    assert chain[-1].subject_identifier == SSD
    crd = get_data(card.transmit, 0x66)
    assert bytes.fromhex("2A864886FC6B041100") in crd and bytes.fromhex("2A864886FC6B0403") not in crd


def test_bank_puts_scp03_keys_inside_scp11b_then_opens_with_scp03(card: InProcessCard) -> None:
    assert install_scp11_ssd(card) == SW.SUCCESS
    session = scp11b(card)
    assert session.open() == SW.SUCCESS
    answer, sw = session.put_scp03_keys(BANK_KEYS)
    assert sw == SW.SUCCESS
    assert answer[0] == 0x30 and len(answer) == 1 + 3 * 3  # KVN then three key check values
    bank = HostSession(card.transmit, SSD, key=b"\x11" * 16)
    bank.keys = BANK_KEYS
    bank.open()  # SCP03 with the bank's keys
    data, sw = bank.send(c.get_data(0x66))
    assert sw == SW.SUCCESS and bytes.fromhex("2A864886FC6B040370") in data  # now it speaks SCP03 too


def test_an_ssd_personalises_itself_in_its_scp11b_session_which_closes_the_window(card: InProcessCard) -> None:
    """GP 2.3.1 §11.10, §5.3.2: SET STATUS of the selected SD itself, SELECTABLE to PERSONALIZED."""
    assert install_scp11_ssd(card) == SW.SUCCESS
    session = scp11b(card)
    assert session.open() == SW.SUCCESS
    assert session.put_scp03_keys(BANK_KEYS)[1] == SW.SUCCESS
    assert session.send(c.set_status(0x40, 0x0F, SSD))[1] == SW.SUCCESS
    assert card.state["apps"][SSD.hex().upper()]["lifecycle"] == 0x0F
    # Personalised: this SCP11b session changes nothing more, not even the state again.
    assert session.send(c.set_status(0x40, 0x0F, SSD))[1] == SW.SECURITY_STATUS_NOT_SATISFIED
    again = scp11b(card)
    assert again.open() == SW.SUCCESS
    assert again.put_scp03_keys(StaticKeys(b"\x01" * 16, b"\x02" * 16, b"\x03" * 16, 0x31))[1] == (
        SW.SECURITY_STATUS_NOT_SATISFIED
    )
    # Another SD's state stays out of its reach.
    assert again.send(c.set_status(0x40, 0x0F, ISD_AID))[1] != SW.SUCCESS


def test_once_personalised_scp11b_changes_nothing_but_scp11a_still_may(card: InProcessCard) -> None:
    assert install_scp11_ssd(card) == SW.SUCCESS
    ca = CertificateAuthority.generate(b"\xb4\x01", Curve.P256, "bank OCE CA")
    oce, sd11 = KeyPair.generate(), KeyPair.generate()
    session = scp11b(card)
    assert session.open() == SW.SUCCESS
    # Before personalisation: the bank's OCE CA (KID 10) and an SCP11a key (KID 11) go in.
    assert session.put_key(encode_put_key_ec_p256(OCE_KVN, ca.keys.public_point), kid=OCE_KID)[1] == SW.SUCCESS
    put = encode_put_key_ec_private(0x01, sd11.private_scalar.to_bytes(32, "big"), 0x00, session.host.encrypt_key)
    assert session.put_key(put, kid=0x11)[1] == SW.SUCCESS
    # The agency marks the SSD personalised (SET STATUS through the ISD).
    isd = HostSession(card.transmit).open()
    assert isd.send(c.set_status(0x40, 0x0F, SSD))[1] == SW.SUCCESS
    again = scp11b(card)
    assert again.open() == SW.SUCCESS
    assert again.send(c.get_data(0x66))[1] == SW.SUCCESS  # reading is fine
    assert again.put_scp03_keys(BANK_KEYS)[1] == SW.SECURITY_STATUS_NOT_SATISFIED
    # With SCP11a the bank's OCE is authenticated by its certificate: key management goes on.
    cert = oce_certificate(ca.keys, oce.public_key, serial=1)
    host = SCP11a(
        sd11.public_point, 0x01, oce_private_key=oce.private_key, certificates=[cert], oce_kvn=OCE_KVN, oce_kid=OCE_KID
    )
    a = SCP11Session(card.transmit, SSD, host)
    assert a.open() == SW.SUCCESS
    assert a.put_scp03_keys(BANK_KEYS)[1] == SW.SUCCESS
    assert "30" in card.state["sds"][SSD.hex().upper()]["keys"]


def test_wrong_kind_of_key_and_point_off_the_curve_are_refused(card: InProcessCard) -> None:
    assert install_scp11_ssd(card) == SW.SUCCESS
    session = scp11b(card)
    assert session.open() == SW.SUCCESS
    point = bytearray(KeyPair.generate().public_point)
    point[-1] ^= 0x01  # no longer on P-256
    assert session.put_key(encode_put_key_ec_p256(OCE_KVN, bytes(point)), kid=OCE_KID)[1] == SW.WRONG_DATA
    # A public key under an SD key identifier is the wrong kind of key.
    good = KeyPair.generate().public_point
    assert session.put_key(encode_put_key_ec_p256(0x02, good), kid=0x13)[1] == SW.WRONG_DATA
    assert list(card.state["sds"][SSD.hex().upper()]["scp11"]["keys"]) == ["13/01"]


def test_a_private_key_put_under_scp11b_opens_the_next_session(card: InProcessCard) -> None:
    assert install_scp11_ssd(card) == SW.SUCCESS
    session = scp11b(card)
    assert session.open() == SW.SUCCESS
    new = KeyPair.generate(Curve.P256)
    data = encode_put_key_ec_private(0x02, new.private_scalar.to_bytes(32, "big"), 0x00, session.host.encrypt_key)
    answer, sw = session.put_key(data, replace=0x01, kid=0x13)
    assert (answer, sw) == (b"\x02", SW.SUCCESS)  # KVN, and no check value for an ECC key
    keys = card.state["sds"][SSD.hex().upper()]["scp11"]["keys"]
    assert list(keys) == ["13/02"]
    assert new.private_scalar.to_bytes(32, "big").hex().upper() == keys["13/02"]["d"]
    follow = SCP11Session(card.transmit, SSD, SCP11b(new.public_point, 0x02))
    assert follow.open() == SW.SUCCESS
    old = SCP11Session(card.transmit, SSD, SCP11b(KeyPair.generate().public_point, 0x01))
    assert old.open() == SW.REFERENCED_DATA_NOT_FOUND


def test_scp11c_may_not_put_keys(card: InProcessCard) -> None:
    assert install_scp11_ssd(card) == SW.SUCCESS
    ca = CertificateAuthority.generate(b"\xb4\x02", Curve.P256, "bank OCE CA")
    oce = KeyPair.generate()
    setup = scp11b(card)
    assert setup.open() == SW.SUCCESS
    assert setup.put_key(encode_put_key_ec_p256(OCE_KVN, ca.keys.public_point), kid=OCE_KID)[1] == SW.SUCCESS
    sd15 = KeyPair.generate()
    put = encode_put_key_ec_private(0x01, sd15.private_scalar.to_bytes(32, "big"), 0x00, setup.host.encrypt_key)
    assert setup.put_key(put, kid=0x15)[1] == SW.SUCCESS
    cert = oce_certificate(ca.keys, oce.public_key, serial=2)
    session = SCP11Session(
        card.transmit,
        SSD,
        SCP11c(
            sd15.public_point,
            0x01,
            oce_private_key=oce.private_key,
            certificates=[cert],
            oce_kvn=OCE_KVN,
            oce_kid=OCE_KID,
        ),
    )
    assert session.open() == SW.SUCCESS
    assert session.put_scp03_keys(BANK_KEYS)[1] == SW.CONDITIONS_NOT_SATISFIED  # Amd F §3.1.3


# ------------------------------------------------------------------ strictness and tearing


def test_refused_handshakes_count_against_the_retry_limit(card: InProcessCard) -> None:
    assert install_scp11_ssd(card) == SW.SUCCESS
    ca = CertificateAuthority.generate(b"\xb4\x03", Curve.P256, "bank OCE CA")
    setup = scp11b(card)
    assert setup.open() == SW.SUCCESS
    assert setup.put_key(encode_put_key_ec_p256(OCE_KVN, ca.keys.public_point), kid=OCE_KID)[1] == SW.SUCCESS
    stranger = CertificateAuthority.generate(key_identifier(ca.keys.public_point), Curve.P256, "not the bank")
    oce = KeyPair.generate()
    cert = stranger.issue(
        serial_number=b"\x03",
        subject_identifier=b"\x0c\xe3",
        public_key=oce.public_key,
        key_usage=KeyUsage.KEY_AGREEMENT,
        expiration_date=TODAY.replace(year=TODAY.year + 2),
    )
    point = sd_point(card.transmit, SSD, issuer_anchor(card.state))
    limit = card.state["auth_limit"]
    for _ in range(limit):
        a = SCP11Session(
            card.transmit,
            SSD,
            SCP11a(
                point,
                0x01,
                kid=0x11,
                oce_private_key=oce.private_key,
                certificates=[cert],
                oce_kvn=OCE_KVN,
                oce_kid=OCE_KID,
            ),
        )
        assert a.open() == SW.CERTIFICATE_VERIFICATION_FAILED  # signed by the wrong CA (Amd F: 6600)
    # At the limit even a correct SCP11b handshake is refused: the SD is blocked for SCP11.
    assert scp11b(card).open() == SW.AUTHENTICATION_METHOD_BLOCKED
    assert card.state["sds"][SSD.hex().upper()]["scp11"]["failures"] == limit


def test_a_flipped_bit_in_the_handshake_leaves_no_session(card: InProcessCard) -> None:
    point = sd_point(card.transmit, ISD_AID, issuer_anchor(card.state))
    host = SCP11b(point, 0x01)
    command = bytearray(host.internal_authenticate())
    command[-10] ^= 0x01  # inside ePK.OCE: no longer a point on the curve
    assert sw_of(card.transmit(c.select(ISD_AID))) == SW.SUCCESS
    assert sw_of(card.transmit(bytes(command))) == SW.WRONG_DATA
    assert card.card.channel is None


def test_power_lost_while_installing_an_scp11_ssd_leaves_no_half_written_key(tmp_path: Path) -> None:
    path = tmp_path / "torn.json"
    assert cardsim_main(["init", str(path), "--scp", "11"]) == 0
    card = InProcessCard(path)
    isd = HostSession(card.transmit).open()
    before = path.read_bytes()  # after the session opened (its sequence counter is stored)

    def pulled(state: object) -> None:
        raise OSError("card pulled while writing")

    card.card._on_change = pulled
    params = c.install_parameters(c.sd_install_parameters(0x11, 0x00))
    _, sw = isd.install(SSD_PACKAGE_AID, SSD_MODULE_AID, SSD, privileges=b"\x80", params=params)
    assert sw == SW.MEMORY_FAILURE
    assert path.read_bytes() == before  # nothing reached the card's memory
    assert SSD.hex().upper() not in card.state["sds"]  # and the card's own view was rolled back
    # Re-inserted, the card installs the SSD whole.
    again = InProcessCard(path)
    assert install_scp11_ssd(again) == SW.SUCCESS
    saved = json.loads(path.read_text())
    assert saved["sds"][SSD.hex().upper()]["scp11"]["keys"]["13/01"]["certs"]
    assert store.load(path)["attestation"]["issued"] == 2  # the ISD key at init, then this SSD key


# ------------------------------------------------------------------ fuzzed chains on the card


@cache
def _fuzz_card() -> Card:
    state = new_state(cin=bytes.fromhex("0A0B0C0D0E0F1011"))
    scp11.provision_card(state, today=TODAY, random=os.urandom)
    ca = CertificateAuthority.generate(b"\xb4\x09", Curve.P256, "bank OCE CA")
    state["sds"][ISD_AID.hex().upper()]["scp11"]["keys"]["10/03"] = {
        "use": "anchor",
        "curve": 0,
        "q": ca.keys.public_point.hex().upper(),
        "ca_id": "B409",
    }
    return Card(state)


_HANDSHAKE_SWS = {
    SW.SUCCESS,
    SW.WRONG_LENGTH,
    SW.WRONG_DATA,
    SW.REFERENCED_DATA_NOT_FOUND,
    SW.CERTIFICATE_VERIFICATION_FAILED,
    SW.FUNCTION_NOT_SUPPORTED,
    SW.CONDITIONS_NOT_SATISFIED,
}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from([0x03, 0x83]), st.sampled_from([0x2A, 0x82, 0x88]))
def test_fuzzed_handshake_data_never_crashes_the_card(data: bytes, p2: int, ins: int) -> None:
    """Random PSO / MUTUAL / INTERNAL AUTHENTICATE bodies: always a named status word, never 6F00
    (the card's "I crashed" answer), and never an open session."""
    card = _fuzz_card()
    card.state["sds"][ISD_AID.hex().upper()]["scp11"]["failures"] = 0
    assert sw_of(card.transmit(c.select(ISD_AID))) == SW.SUCCESS
    p1, p2 = (0x10, p2) if ins == 0x2A else (0x01, 0x13 if ins == 0x88 else 0x11)
    header = bytes((0x80, ins, p1, p2))
    body = (
        bytes((len(data),)) + data
        if 0 < len(data) < 256
        else (b"\x00" + len(data).to_bytes(2, "big") + data if data else b"")
    )
    answer = card.transmit(header + body)
    assert sw_of(answer) in _HANDSHAKE_SWS, (answer[-2:].hex(), card.last_error)
    assert card.channel is None or sw_of(answer) == SW.SUCCESS
