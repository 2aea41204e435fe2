"""Host side of SCP11 for the cardsim tests: gp's SCP11 classes over any ``transmit``.

The card's SD public key is read the way a real off-card entity reads it: GET DATA BF21 before
any session, with the chain checked against the card issuer CA (the anchor ``init --scp 11``
keeps beside the card's attestation record).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from cardsim import scp11
from cardsim.state import State
from gp import commands as c
from gp.apdu import SW
from gp.keys import StaticKeys, encode_put_key_symmetric
from gp.scp11 import (
    CertificateAuthority,
    GPCertificate,
    KeyPair,
    KeyUsage,
    SCP11a,
    SCP11b,
    SCP11c,
    TrustAnchor,
    parse_certificates,
    verify_chain,
)
from gp.tlv import decode_one, encode_tlv

Transmit = Callable[[bytes], bytes]
TODAY = dt.datetime.now(dt.UTC).date()


def key_identifier(point: bytes) -> bytes:
    """RFC 5280 §4.2.1.2 method 1 (SHA-1 of the point): the CA-KLOC identifier the card assumes
    for a trust anchor put without one (stated here independently of cardsim)."""
    return hashlib.sha1(point).digest()  # noqa: S324 - an identifier, not a security hash


def oce_certificate(ca_keys: KeyPair, oce_public: ec.EllipticCurvePublicKey, serial: int) -> GPCertificate:
    """CERT.OCE.ECKA (GP format) from a CA whose key the SD holds as an anchor put without an
    identifier, valid for two years from today."""
    ca = CertificateAuthority(ca_keys, key_identifier(ca_keys.public_point), "bank OCE CA")
    return ca.issue(
        serial_number=bytes((serial,)),
        subject_identifier=b"\x0c\xe0" + bytes((serial,)),
        public_key=oce_public,
        key_usage=KeyUsage.KEY_AGREEMENT,
        expiration_date=TODAY.replace(year=TODAY.year + 2),
    )


def sw_of(rapdu: bytes) -> int:
    return int.from_bytes(rapdu[-2:], "big")


def issuer_anchor(state: State) -> TrustAnchor:
    anchor = scp11.issuer_anchor(state)
    assert anchor is not None, "the card has no attestation record (init --scp 11)"
    return anchor


def certificate_store(transmit: Transmit, sd_aid: bytes, kid: int = 0x13, kvn: int = 0x01) -> bytes:
    """SELECT ``sd_aid`` and GET DATA BF21 naming the key (Amd F §7.4.2); the store's value."""
    assert sw_of(transmit(c.select(sd_aid))) == SW.SUCCESS
    answer = transmit(bytes((0x80, 0xCA, 0xBF, 0x21)) + _lc(encode_tlv(0xA6, encode_tlv(0x83, bytes((kid, kvn))))))
    assert sw_of(answer) == SW.SUCCESS, answer[-2:].hex()
    store = decode_one(answer[:-2])[0]
    assert store.tag == 0xBF21
    return store.value


def sd_point(transmit: Transmit, sd_aid: bytes, anchor: TrustAnchor, kid: int = 0x13, kvn: int = 0x01) -> bytes:
    """PK.SD.ECKA from the SD's certificate chain, once the chain checks out against ``anchor``."""
    chain = parse_certificates(certificate_store(transmit, sd_aid, kid, kvn))
    return verify_chain(chain, anchor, TODAY, KeyUsage.KEY_AGREEMENT).public_key_point


def _lc(data: bytes) -> bytes:
    return bytes((len(data),)) + data + b"\x00"


class SCP11Session:
    """SELECT an SD and open SCP11 with gp's host; ``send`` wraps, transmits and unwraps."""

    def __init__(self, transmit: Transmit, sd_aid: bytes, host: SCP11a | SCP11b | SCP11c) -> None:
        self.transmit = transmit
        self.sd_aid = sd_aid
        self.host = host

    def open(self) -> int:
        """Run the handshake; the status word of the last handshake command (9000 when open)."""
        assert sw_of(self.transmit(c.select(self.sd_aid))) == SW.SUCCESS
        if isinstance(self.host, SCP11b):
            answer = self.transmit(self.host.internal_authenticate())
        else:
            for pso in self.host.perform_security_operation():
                answer = self.transmit(pso)
                if sw_of(answer) != SW.SUCCESS:
                    return sw_of(answer)
            answer = self.transmit(self.host.mutual_authenticate())
        if sw_of(answer) == SW.SUCCESS:
            self.host.complete(answer)
        return sw_of(answer)

    def send(self, plain: bytes) -> tuple[bytes, int]:
        out = self.host.unwrap(self.transmit(self.host.wrap(plain)))
        return out[:-2], sw_of(out)

    def put_scp03_keys(self, keys: StaticKeys, *, replace: int = 0x00) -> tuple[bytes, int]:
        """PUT KEY of an AES key set (KID 01..03) encrypted under the session's S-DEK."""
        data = encode_put_key_symmetric(keys.version, keys, self.host.encrypt_key, algorithm="aes")
        return self.send(bytes((0x80, 0xD8, replace, 0x81)) + _lc(data))

    def put_key(self, data: bytes, *, replace: int = 0x00, kid: int) -> tuple[bytes, int]:
        return self.send(bytes((0x80, 0xD8, replace, kid)) + _lc(data))
