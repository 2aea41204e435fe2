"""yubikit (yubikey-manager, BSD; a test peer only) drives SCP11 on the emulated card.

An SSD installed for SCP11 (``81 02 11 00``) is opened by yubikit's SCP11b: GET DATA, PUT KEY of
an SCP03 key set and of the bank's SCP11a key and OCE CA, then SCP11a with an X.509 chain, PUT
KEY again, and SCP03 with the keys it put. Where yubikit and GlobalPlatform differ, the card
follows GlobalPlatform and the tests below show the difference:

* GET DATA: the card answers the data object with its tag (GPC 2.3.1 §11.3.3: ``66 {73 ...}``,
  ``E0 {C0 ...}``, ``BF21 {certificates}``). yubikit's ``get_card_recognition_data``,
  ``get_key_information`` and ``get_certificate_bundle`` expect the value alone (what YubiKeys
  send), so they misread a GP card; the raw ``get_data`` works.
* STORE DATA and GET DATA: yubikit sends CLA 00 (84 secured). GET DATA may use either class
  (GPC 2.3.1 §11.3); STORE DATA is a GP command with CLA 80-8F (§11.11.2), so the card answers
  6E00 to yubikit's ``store_certificate_bundle`` and ``store_ca_issuer``. Trust anchors put
  without a CA identifier get the RFC 5280 key identifier (SHA-1 of the point), the AKI yubikit's
  X.509 chains carry.
* PUT KEY of an ECC key: yubikit omits the key check value length byte after B0/B1 (GPC 2.3.1
  Table 11-70 has one); the card reads both forms (``gp.keys.decode_put_key``).
* SCP11b: yubikit documents that a YubiKey refuses commands needing OCE authentication in SCP11b.
  Our card takes key management in SCP11b only until the SD is personalised (docs/scp11.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from yubikit.core import Version
from yubikit.core.smartcard import ApduError, SmartCardConnection, SmartCardProtocol
from yubikit.core.smartcard.scp import KeyRef, Scp03KeyParams, Scp11KeyParams
from yubikit.core.smartcard.scp import StaticKeys as YubikitKeys
from yubikit.securitydomain import SecurityDomainSession

from cardsim.cli import main as cardsim_main
from cardsim.transport import InProcessCard
from gp import commands as c
from gp.aids import SSD_MODULE_AID, SSD_PACKAGE_AID
from gp.apdu import SW
from gp.scp11 import CertificateAuthority, KeyPair, KeyUsage
from gp.tlv import decode_all, decode_one
from tests.cardsim.hostlib import HostSession
from tests.cardsim.scp11_host import TODAY, issuer_anchor, key_identifier, sd_point
from tests.yubikit_peer import RecordingConnection

SSD = bytes.fromhex("A000000151535344424B02")
OCE_REF = KeyRef(0x10, 0x03)


class SsdSession(SecurityDomainSession):
    """yubikit's session, which always selects the ISD AID, pointed at one SSD instead."""

    def __init__(self, connection: SmartCardConnection, aid: bytes) -> None:
        self.protocol = SmartCardProtocol(connection)
        self.protocol.select(aid)
        self.protocol.configure(Version(5, 3, 0))


def point_key(point: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


@pytest.fixture
def card(tmp_path: Path) -> InProcessCard:
    path = tmp_path / "card.json"
    assert cardsim_main(["init", str(path), "--scp", "11"]) == 0
    card = InProcessCard(path)
    isd = HostSession(card.transmit).open()
    params = c.install_parameters(c.sd_install_parameters(0x11, 0x00))
    assert isd.install(SSD_PACKAGE_AID, SSD_MODULE_AID, SSD, privileges=b"\x80", params=params)[1] == SW.SUCCESS
    return card


def test_yubikit_scp11b_reads_puts_scp03_keys_and_opens_again(card: InProcessCard) -> None:
    pk_sd = point_key(sd_point(card.transmit, SSD, issuer_anchor(card.state)))
    connection = RecordingConnection(card)
    session = SsdSession(connection, SSD)
    session.authenticate(Scp11KeyParams(KeyRef(0x13, 0x01), pk_sd))
    crd = decode_one(session.get_data(0x66))[0]
    assert crd.tag == 0x66 and bytes.fromhex("2A864886FC6B041100") in crd.value
    new = YubikitKeys(b"\x11" * 16, b"\x22" * 16, b"\x33" * 16)
    session.put_key(KeyRef(0x01, 0x30), new)  # yubikit checks the key check values the card answers
    assert connection.sent[-1][:2] == b"\x84\xd8"  # it went secured
    again = SsdSession(RecordingConnection(card), SSD)
    again.authenticate(Scp11KeyParams(KeyRef(0x13, 0x01), pk_sd))
    assert decode_one(again.get_data(0x66))[0].tag == 0x66
    scp03 = SsdSession(RecordingConnection(card), SSD)
    scp03.authenticate(Scp03KeyParams(KeyRef(0x01, 0x30), new))
    assert bytes.fromhex("2A864886FC6B040370") in scp03.get_data(0x66)  # SCP03 announced once keyed


def test_yubikit_puts_the_scp11a_key_and_oce_ca_then_opens_scp11a_with_x509(card: InProcessCard) -> None:
    pk_sd = point_key(sd_point(card.transmit, SSD, issuer_anchor(card.state)))
    session = SsdSession(RecordingConnection(card), SSD)
    session.authenticate(Scp11KeyParams(KeyRef(0x13, 0x01), pk_sd))
    ca_keys, sd11, oce = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    session.put_key(OCE_REF, ca_keys.public_key)  # B0 + F0 under KID 10: PK.CA-KLOC.ECDSA
    session.put_key(KeyRef(0x11, 0x01), sd11.private_key)  # B1 + F0 under KID 11: SK.SD.ECKA (SCP11a)
    keys = card.state["sds"][SSD.hex().upper()]["scp11"]["keys"]
    assert keys["11/01"]["d"] == sd11.private_scalar.to_bytes(32, "big").hex().upper()
    assert keys["10/03"]["use"] == "anchor"
    # The agency personalises the SSD: from now on only an authenticated OCE changes it.
    assert HostSession(card.transmit).open().send(c.set_status(0x40, 0x0F, SSD))[1] == SW.SUCCESS
    locked_out = SsdSession(RecordingConnection(card), SSD)
    locked_out.authenticate(Scp11KeyParams(KeyRef(0x13, 0x01), pk_sd))
    with pytest.raises(ApduError) as refused:
        locked_out.put_key(KeyRef(0x01, 0x30), YubikitKeys(b"\x44" * 16, b"\x55" * 16, b"\x66" * 16))
    assert refused.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    ca = CertificateAuthority(ca_keys, key_identifier(ca_keys.public_point), "bank OCE CA")
    cert = ca.issue_x509(
        serial_number=0x0CE,
        subject_name="bank OCE",
        subject_identifier=b"\x0c\xe1",
        public_key=oce.public_key,
        key_usage=KeyUsage.KEY_AGREEMENT,
        not_before=TODAY.replace(year=TODAY.year - 1),
        not_after=TODAY.replace(year=TODAY.year + 1),
    )
    from cryptography import x509

    params = Scp11KeyParams(
        KeyRef(0x11, 0x01),
        sd11.public_key,
        oce_ref=OCE_REF,
        sk_oce_ecka=oce.private_key,
        certificates=[x509.load_der_x509_certificate(cert.encode())],
    )
    a = SsdSession(RecordingConnection(card), SSD)
    a.authenticate(params)
    new = YubikitKeys(b"\x44" * 16, b"\x55" * 16, b"\x66" * 16)
    a.put_key(KeyRef(0x01, 0x31), new)
    scp03 = SsdSession(RecordingConnection(card), SSD)
    scp03.authenticate(Scp03KeyParams(KeyRef(0x01, 0x31), new))


def test_where_yubikit_reads_get_data_without_the_tag_the_card_follows_gp(card: InProcessCard) -> None:
    pk_sd = point_key(sd_point(card.transmit, SSD, issuer_anchor(card.state)))
    session = SsdSession(RecordingConnection(card), SSD)
    session.authenticate(Scp11KeyParams(KeyRef(0x13, 0x01), pk_sd))
    info = decode_one(session.get_data(0xE0))[0]  # GPC 2.3.1 §11.3.3.1: E0 { C0 ... }
    assert info.tag == 0xE0
    assert bytes((0x13, 0x01, 0xB1, 32, 0xF0, 1)) in [t.value for t in decode_all(info.value)]
    with pytest.raises(ValueError, match="got 0xe0 expected 0xc0"):  # yubikit wants C0 entries alone
        session.get_key_information()
    with pytest.raises(ValueError, match="asn1"):  # it reads the BF21 store itself as an X.509 certificate
        session.get_certificate_bundle(KeyRef(0x13, 0x01))
    with pytest.raises(ValueError, match="got 0x66 expected 0x73"):
        session.get_card_recognition_data()
    with pytest.raises(ApduError) as refused:  # STORE DATA with CLA 00/84 is not a GP STORE DATA
        session.store_ca_issuer(OCE_REF, b"\x01" * 20)
    assert refused.value.sw == SW.CLA_NOT_SUPPORTED
