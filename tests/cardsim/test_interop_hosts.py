"""The emulated card against hosts nobody here wrote (issue 14, interoperability).

yubikit (yubikey-manager, BSD) drives the card's ISD with its own SCP03 implementation: it sends
extended-length APDUs and the bare AES form of PUT KEY. Other commands are built here from the
specifications with `cryptography` alone, not with `gp`'s host code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from yubikit.core.smartcard.scp import KeyRef, Scp03KeyParams
from yubikit.core.smartcard.scp import StaticKeys as YubikitKeys
from yubikit.securitydomain import SecurityDomainSession

from cardsim.transport import InProcessCard
from gp.crypto import DES3Key
from gp.keys import StaticKeys, decode_put_key, kcv_aes, scp03_decrypt_key
from gp.scp import SCP02, scp02_session_keys
from gp.scp_card import ISD_AID
from tests.yubikit_peer import RecordingConnection

DEFAULT_KEY = bytes.fromhex("404142434445464748494A4B4C4D4E4F")


def is_extended(apdu: bytes) -> bool:
    return len(apdu) > 6 and apdu[4] == 0x00


def aes_cbc(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def test_yubikit_authenticates_reads_and_replaces_the_isd_keys(make_card: Callable[..., InProcessCard]) -> None:
    """yubikit's SecurityDomainSession: SCP03 with extended-length APDUs, GET DATA, PUT KEY of a new
    key set in the bare AES form replacing the default one, then SCP03 again with the new keys."""
    card = make_card()
    connection = RecordingConnection(card)
    session = SecurityDomainSession(connection)
    session.authenticate(Scp03KeyParams(KeyRef(0x01, 0x30), YubikitKeys(DEFAULT_KEY, DEFAULT_KEY, DEFAULT_KEY)))
    cin = session.get_data(0x45)
    assert cin[:2] == b"\x45\x08" and cin[2:] == bytes.fromhex("0102030405060708")
    # yubikit sent EXTERNAL AUTHENTICATE and GET DATA as secured extended-length APDUs.
    secured = [apdu for apdu in connection.sent if apdu[0] & 0x04]
    assert secured and all(is_extended(apdu) for apdu in secured)

    new = YubikitKeys(os.urandom(16), os.urandom(16), os.urandom(16))
    session.put_key(KeyRef(0x01, 0x31), new, replace_kvn=0x30)  # yubikit checks the KCVs the card returns
    again = SecurityDomainSession(RecordingConnection(card))
    again.authenticate(Scp03KeyParams(KeyRef(0x01, 0x31), new))
    assert again.get_data(0x45) == cin
    # The default key set is gone: INITIALIZE UPDATE for it finds no such key version (6A88,
    # which yubikit reports as incorrect SCP parameters).
    old = RecordingConnection(card)
    with pytest.raises(ValueError, match="Incorrect SCP parameters"):
        SecurityDomainSession(old).authenticate(
            Scp03KeyParams(KeyRef(0x01, 0x30), YubikitKeys(DEFAULT_KEY, DEFAULT_KEY, DEFAULT_KEY))
        )
    assert card.transmit(old.sent[-1])[-2:] == b"\x6a\x88"


def test_put_key_accepts_both_aes_component_forms() -> None:
    """GP 2.3.1 §11.8.2.3: a component of whole blocks is the encrypted key alone (Table 11-71);
    otherwise a key length byte precedes the padded encrypted key (Table 11-70)."""
    dek = os.urandom(16)
    keys = [os.urandom(16), os.urandom(32), os.urandom(24)]
    bare = bytes((0x31,))
    with_length = bytes((0x31,))
    for key in keys:
        kcv = kcv_aes(key)[:3]
        padded = key if len(key) % 16 == 0 else key + b"\x80" + bytes(15 - len(key) % 16)
        encrypted = aes_cbc(dek, padded)
        if len(key) % 16 == 0:
            bare += bytes((0x88, len(encrypted))) + encrypted + b"\x03" + kcv
        with_length += bytes((0x88, 1 + len(encrypted), len(key))) + encrypted + b"\x03" + kcv
    decrypt: Any = lambda enc, n: scp03_decrypt_key(dek, enc, n)  # noqa: E731
    assert [c.value for c in decode_put_key(bare, decrypt).components] == keys[:2]
    assert [c.value for c in decode_put_key(with_length, decrypt).components] == keys


def test_an_extended_length_scp02_external_authenticate_is_maced_as_sent(
    make_card: Callable[..., InProcessCard],
) -> None:
    """SCP02: the card checks the C-MAC over the header and Lc as they were sent. An extended
    EXTERNAL AUTHENTICATE whose MAC covers ``00 00 10`` is accepted; the same command with the MAC
    of the short form is refused (6982), as the card must MAC what was sent."""
    for mac_over_sent_form, expected in ((True, b"\x90\x00"), (False, b"\x69\x82")):
        card = make_card(scp=0x02)
        keys = StaticKeys(DEFAULT_KEY, DEFAULT_KEY, DEFAULT_KEY, 0x20)
        host = SCP02(keys, 0x01, i=0x55, sd_aid=ISD_AID)
        assert card.transmit(bytes.fromhex("00A4040008") + ISD_AID)[-2:] == b"\x90\x00"
        short = host.external_authenticate(card.transmit(host.initialize_update()))
        header, cryptogram = short[:4], short[5:13]
        c_mac = DES3Key(scp02_session_keys(keys, host.sequence_counter).c_mac)  # GP 2.3.1 §E.4.1
        covered = header + (b"\x00\x00\x10" if mac_over_sent_form else b"\x10") + cryptogram
        mac = c_mac.retail_mac(covered)
        assert card.transmit(header + b"\x00\x00\x10" + cryptogram + mac) == expected
