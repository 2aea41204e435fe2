"""Interoperability: yubikit's SCP11 host (yubikey-manager, BSD; used here only as a test peer)
drives gp's card side (:class:`gp.scp11.CardSCP11`) through a small in-test security domain.

What yubikit does and where it differs from Amendment F (and what gp does instead):

* It sends X.509 certificates in PERFORM SECURITY OPERATION, P1 = KVN and P2 = KID | 80 while
  more follow; gp's host sends GP (7F21) certificates the same way, and the card takes both.
* It only does P-256 with AES-128 session keys and key usage 3C (gp also does P-384/AES-256 and
  key usages 34 and 1C).
* It encrypts an empty command data field (16 bytes of padding alone) where Amd D §6.2.6, which
  Amd F §6.6 uses, says a command without data is not encrypted (the counter still advances).
  gp's host sends no data field; gp's card reads both as the same plain command (the C-MAC
  covers what was sent, so accepting it weakens nothing). ``test_...empty_data_field`` shows it.
* For SCP11c it computes ECDH(eSK.OCE, 5F49 of the answer) + ECDH(SK.OCE, PK.SD), the same code
  as SCP11a. Because a card answers PK.SD.ECKA in 5F49 for SCP11c (Amd F §3.1.3: no card
  ephemeral key), that is ShSes + ShSss, the specification's secrets, and the session works.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from yubikit.core.smartcard import ApduError
from yubikit.core.smartcard.scp import KeyRef, Scp11KeyParams
from yubikit.core.smartcard.scp import StaticKeys as YubikitKeys
from yubikit.securitydomain import SecurityDomainSession

from gp.apdu import SW, CommandAPDU
from gp.errors import GPError
from gp.scp11 import CardSCP11, Curve, KeyPair, KeyUsage, SCP11Variant, X509Certificate, parse_certificates
from gp.scp11.constants import Tag
from gp.scp_card import sw_for_error
from gp.tlv import decode_one, encode_tlv
from tests.gp.scp11_world import OCE_KID, OCE_KVN, SD_KVN, TODAY, World, exchange, handshake, seeded
from tests.yubikit_peer import RecordingConnection

SD_AID = bytes.fromhex("A000000151000000")


class EmulatedSecurityDomain:
    """Just enough of a security domain for yubikit: SELECT, the SCP11 handshake, and secured
    GET DATA (BF21 certificate store) and PUT KEY (SCP03 keys under S-DEK)."""

    def __init__(self, card: CardSCP11) -> None:
        self.card = card
        self.put_keys: dict[int, list[bytes]] = {}
        self.refused_handshakes = 0  # what the caller counts against the retry limit
        self.plain: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[1] == 0xA4:
            self.card.reset()
            return b"\x90\x00"
        if self.card.handles(apdu):
            answer = self.card.process(apdu)
            self.refused_handshakes += answer[-2:] != b"\x90\x00"
            return answer
        try:
            plain = self.card.unwrap_command(apdu)
        except GPError as exc:
            return sw_for_error(exc).to_bytes(2, "big")
        self.plain.append(plain)
        if not self.card.allows(plain):
            return SW.CONDITIONS_NOT_SATISFIED.to_bytes(2, "big")
        return self.card.wrap_response(self._execute(CommandAPDU.from_bytes(plain)))

    def _execute(self, cmd: CommandAPDU) -> bytes:
        if cmd.ins == 0xCA and (cmd.p1, cmd.p2) == (0xBF, 0x21):
            # GET DATA BF21 with A6 { 83 { KID KVN } } naming the key (Amd F §7.4.2)
            ref = decode_one(decode_one(cmd.data)[0].value)[0].value
            key = self.card.keys.get((ref[1], ref[0]))
            return (key.certificate_store() + b"\x90\x00") if key else b"\x6a\x88"
        if cmd.ins == 0xCA:
            return bytes((cmd.p2, 3)) + b"E-C" + b"\x90\x00"
        if cmd.ins == 0xD8:
            decoded = self.card.decode_put_key(cmd.data)
            self.put_keys[decoded.new_version] = [c.value for c in decoded.components]
            return bytes((decoded.new_version,)) + b"".join(c.kcv for c in decoded.components) + b"\x90\x00"
        return b"\x6d\x00"


@pytest.fixture
def world() -> World:
    return World(Curve.P256, x509=True)  # yubikit sends X.509 OCE certificates


def _session(world: World) -> tuple[SecurityDomainSession, EmulatedSecurityDomain, RecordingConnection]:
    sd = EmulatedSecurityDomain(world.card())
    connection = RecordingConnection(sd)
    return SecurityDomainSession(connection), sd, connection


def _pk(world: World, variant: SCP11Variant) -> ec.EllipticCurvePublicKey:
    return world.sd_keys[variant].public_key


def _oce_params(world: World, variant: SCP11Variant) -> Scp11KeyParams:
    chain = [c.certificate for c in world.oce_chain if isinstance(c, X509Certificate)]
    return Scp11KeyParams(
        KeyRef(variant.value, SD_KVN),
        _pk(world, variant),
        oce_ref=KeyRef(OCE_KID, OCE_KVN),
        sk_oce_ecka=world.oce_keys.private_key,
        certificates=chain,
    )


def test_yubikit_scp11b_opens_reads_puts_an_scp03_key_set_and_opens_again(world: World) -> None:
    session, sd, connection = _session(world)
    session.authenticate(Scp11KeyParams(KeyRef(SCP11Variant.B.value, SD_KVN), _pk(world, SCP11Variant.B)))
    assert sd.card.is_authenticated and sd.card.security_level == 0x33
    store = session.get_data(0xBF21, encode_tlv(0xA6, encode_tlv(0x83, bytes((0x13, SD_KVN)))))
    obj, _ = decode_one(store)
    assert obj.tag == Tag.CERTIFICATE_STORE
    (leaf,) = parse_certificates(obj.value)
    assert leaf.public_key_point == world.sd_keys[SCP11Variant.B].public_point
    new = YubikitKeys(b"\x11" * 16, b"\x22" * 16, b"\x33" * 16)
    session.put_key(KeyRef(0x01, 0x30), new)  # yubikit checks the KCVs the card answers
    assert sd.put_keys[0x30] == [b"\x11" * 16, b"\x22" * 16, b"\x33" * 16]
    assert connection.sent[-1][:2] == b"\x84\xd8"  # PUT KEY went secured, KCVs checked by yubikit
    again, sd2, _ = _session(world)
    again.authenticate(Scp11KeyParams(KeyRef(SCP11Variant.B.value, SD_KVN), _pk(world, SCP11Variant.B)))
    assert again.get_data(0x66) == b"\x66\x03E-C"
    assert sd2.refused_handshakes == 0


@pytest.mark.parametrize("variant", [SCP11Variant.A, SCP11Variant.C], ids=lambda v: v.label)
def test_yubikit_scp11a_and_c_upload_x509_chains_and_authenticate(world: World, variant: SCP11Variant) -> None:
    session, sd, connection = _session(world)
    session.authenticate(_oce_params(world, variant))
    assert sd.card.is_authenticated and sd.card.variant is variant and sd.card.security_level == 0xB3
    pso = [a for a in connection.sent if a[1] == 0x2A]
    assert [(a[2], a[3]) for a in pso] == [(OCE_KVN, OCE_KID)]
    assert session.get_data(0x66) == b"\x66\x03E-C"
    if variant is SCP11Variant.A:
        session.put_key(KeyRef(0x01, 0x31), YubikitKeys(b"\x44" * 16, b"\x55" * 16, b"\x66" * 16))
        assert 0x31 in sd.put_keys
    else:  # Amd F §3.1.3: no PUT KEY in the replayable SCP11c session
        with pytest.raises(ApduError) as refused:
            session.put_key(KeyRef(0x01, 0x31), YubikitKeys(b"\x44" * 16, b"\x55" * 16, b"\x66" * 16))
        assert refused.value.sw == SW.CONDITIONS_NOT_SATISFIED


def test_gp_host_and_yubikit_agree_on_the_wire_except_the_empty_data_field(world: World) -> None:
    """Same SD, same pinned card randomness: yubikit's GET DATA without data carries a 16-byte
    cryptogram of padding; gp's (the specification's) has no data field, only the C-MAC. The card
    reads both as the same plain command."""
    session, sd, connection = _session(world)
    session.authenticate(Scp11KeyParams(KeyRef(SCP11Variant.B.value, SD_KVN), _pk(world, SCP11Variant.B)))
    session.get_data(0x66)
    yubikit_wire = connection.sent[-1]
    assert yubikit_wire[:4] == bytes.fromhex("04CA0066") and len(CommandAPDU.from_bytes(yubikit_wire).data) == 16 + 8
    card = world.card()
    host = world.host(SCP11Variant.B)
    handshake(host, card)
    gp_wire = host.wrap(b"\x80\xca\x00\x66")
    assert len(CommandAPDU.from_bytes(gp_wire).data) == 8  # C-MAC only
    assert card.unwrap_command(gp_wire) == b"\x80\xca\x00\x66"
    assert sd.plain[-1] == b"\x00\xca\x00\x66"  # yubikit's CLA 00; same command


def test_yubikit_is_refused_with_a_chain_from_the_wrong_ca(world: World) -> None:
    from gp.scp11 import CertificateAuthority

    rogue = CertificateAuthority.generate(world.oce_ca.identifier, Curve.P256, "rogue", seeded("rogue"))
    world.oce_chain = [world.issue_oce(rogue, world.oce_keys)]
    session, sd, _ = _session(world)
    with pytest.raises(ApduError) as refused:
        session.authenticate(_oce_params(world, SCP11Variant.A))
    assert refused.value.sw == 0x6600
    assert sd.refused_handshakes == 1 and not sd.card.is_authenticated


def test_yubikit_scp11b_against_a_card_with_another_key_fails_the_receipt(world: World) -> None:
    other = KeyPair.generate(Curve.P256, seeded("another SD"))
    session, _, _ = _session(world)
    # yubikit's receipt check raises cryptography's InvalidSignature (not a yubikit error)
    with pytest.raises(InvalidSignature):
        session.authenticate(Scp11KeyParams(KeyRef(SCP11Variant.B.value, SD_KVN), other.public_key))


def test_gp_host_reads_what_yubikit_reads(world: World) -> None:
    card = world.card()
    host = world.host(SCP11Variant.A)
    handshake(host, card)
    _, got = exchange(host, card, b"\x80\xca\x00\x66\x00", b"\x66\x03E-C\x90\x00")
    assert got == b"\x66\x03E-C\x90\x00"
    assert dt.date(2026, 12, 4) == TODAY and KeyUsage.KEY_AGREEMENT.encode() == b"\x00\x80"
