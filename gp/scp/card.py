"""Card side of SCP02 and SCP03 (sans-I/O), for the emulated card ``cardsim``.

The cryptography is the same code the host uses (:class:`gp.scp.scp03.SCP03Core`,
:class:`gp.scp.scp02.SCP02Core`); this module adds the card's state machine.

Status words (GP Card Spec 2.3.1 §11.11.3 / §11.13.3, Amd D §7):

INITIALIZE UPDATE
    ``6E00`` CLA not 80/84 · ``6A86`` P2 not 00 · ``6700`` Lc not 8 (16 in S16 mode) ·
    ``6A88`` key version (P1) not present · ``6985`` sequence counter exhausted.
    Any INITIALIZE UPDATE ends the current session.
EXTERNAL AUTHENTICATE
    ``6985`` no INITIALIZE UPDATE before it · ``6982`` CLA without secure messaging ·
    ``6A86`` P2 not 00, or security level unknown / not supported by ``i`` ·
    ``6700`` wrong Lc · ``6300`` host cryptogram wrong · ``6982`` C-MAC wrong.
    Every failure ends the session (a new INITIALIZE UPDATE is needed).
Other commands (:meth:`unwrap_command` raises; :func:`sw_for_error` gives the SW)
    :class:`~gp.errors.MACError` (bad C-MAC, bad C-DEC padding) → ``6982``;
    :class:`~gp.errors.SecureChannelError` (no SM bit in a C-MAC session, SM bit
    without a session) → ``6982``; :class:`~gp.errors.APDUError` → ``6700``.
    A MAC or secure messaging failure ends the session (GP 2.3.1 §10.2.3).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from gp.aids import ISD_AID
from gp.apdu import CommandAPDU
from gp.crypto import scp03_kdf
from gp.errors import APDUError, GPError, MACError, SecureChannelError
from gp.keys import PutKeyData, StaticKeys, decode_put_key, scp02_decrypt_key, scp03_decrypt_key
from gp.scp.common import (
    _ZERO16,
    SCP02_LEVELS,
    SCP03_LEVELS,
    ChannelState,
    SecurityLevel,
    _has_sm,
    _lc,
)
from gp.scp.scp02 import SCP02_I_PSEUDO_RANDOM, SCP02Core, scp02_card_challenge, scp02_session_keys
from gp.scp.scp03 import (
    DDC_CARD_CRYPTOGRAM,
    DDC_HOST_CRYPTOGRAM,
    SCP03_I_PSEUDO_RANDOM,
    SCP03_I_RENC,
    SCP03_I_RMAC,
    SCP03Core,
    scp03_card_challenge,
    scp03_session_keys,
)

__all__ = ["ISD_AID", "CardSCP02", "CardSCP03", "sw_for_error"]


SW_OK = b"\x90\x00"


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def sw_for_error(exc: BaseException) -> int:
    """The status word a card answers when :meth:`unwrap_command` raised ``exc``."""
    if isinstance(exc, MACError | SecureChannelError):
        return 0x6982
    if isinstance(exc, APDUError):
        return 0x6700
    if isinstance(exc, GPError):
        return 0x6F00
    raise exc


class _CardChannel:
    LEVELS: frozenset[int] = frozenset()

    def __init__(
        self, keys: StaticKeys, sd_aid: bytes, kdd: bytes, card_challenge_random: Callable[[int], bytes]
    ) -> None:
        if not isinstance(keys, StaticKeys):
            raise SecureChannelError("keys must be a gp.keys.StaticKeys")
        self.keys = keys
        self.sd_aid = bytes(sd_aid)
        if len(kdd) != 10:
            raise SecureChannelError("key diversification data must be 10 bytes")
        self.kdd = bytes(kdd)
        self._random = card_challenge_random
        self._state = ChannelState.IDLE
        self.security_level = SecurityLevel.NONE
        self.host_challenge = b""
        self.card_challenge = b""

    @property
    def is_authenticated(self) -> bool:
        return self._state is ChannelState.OPEN

    def reset(self) -> None:
        """End the secure channel session (SELECT, card reset, error)."""
        self._state = ChannelState.IDLE
        self.security_level = SecurityLevel.NONE

    def _iu_checks(self, capdu: bytes, challenge_len: int) -> tuple[CommandAPDU | None, bytes]:
        self.reset()
        try:
            cmd = CommandAPDU.from_bytes(capdu)
        except APDUError:
            return None, _sw(0x6700)
        if cmd.cla not in (0x80, 0x84):
            return None, _sw(0x6E00)
        if cmd.p2 != 0x00:
            return None, _sw(0x6A86)
        if len(cmd.data) != challenge_len:
            return None, _sw(0x6700)
        if cmd.p1 not in (0x00, self.keys.version):
            return None, _sw(0x6A88)
        return cmd, b""

    def _ea_checks(self, capdu: bytes, data_len: int) -> tuple[CommandAPDU | None, bytes]:
        if self._state is not ChannelState.INITIALIZED:
            self.reset()
            return None, _sw(0x6985)
        self.reset()
        try:
            cmd = CommandAPDU.from_bytes(capdu)
        except APDUError:
            return None, _sw(0x6700)
        if not _has_sm(cmd.cla):
            return None, _sw(0x6982)
        if cmd.p2 != 0x00 or cmd.p1 not in self.LEVELS:
            return None, _sw(0x6A86)
        if len(cmd.data) != data_len:
            return None, _sw(0x6700)
        return cmd, b""


class CardSCP03(_CardChannel):
    """Card side of SCP03 (Amd D v1.2), S8 or S16.

    ``sequence_counter`` (3 bytes on the wire) is incremented by every INITIALIZE
    UPDATE when ``i`` has the pseudo-random bit 0x10; read it back to persist it.
    """

    LEVELS = SCP03_LEVELS

    def __init__(
        self,
        keys: StaticKeys,
        *,
        s16: bool = False,
        i: int = 0x70,
        sd_aid: bytes = ISD_AID,
        sequence_counter: int = 0,
        kdd: bytes = bytes(10),
        card_challenge_random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(keys, sd_aid, kdd, card_challenge_random)
        self.s16 = bool(s16)
        self.i = i
        self.sequence_counter = sequence_counter
        self._core: SCP03Core | None = None

    def __repr__(self) -> str:
        return f"CardSCP03(state={self._state}, security_level=0x{self.security_level:02X}, i=0x{self.i:02X})"

    def initialize_update(self, capdu: bytes) -> bytes:
        n = 16 if self.s16 else 8
        cmd, err = self._iu_checks(capdu, n)
        if cmd is None:
            return err
        seq = b""
        if self.i & SCP03_I_PSEUDO_RANDOM:
            if self.sequence_counter >= 0xFFFFFF:
                return _sw(0x6985)
            self.sequence_counter += 1
            seq = self.sequence_counter.to_bytes(3, "big")
            card_challenge = scp03_card_challenge(self.keys.enc, seq, self.sd_aid, self.s16)
        else:
            card_challenge = bytes(self._random(n))
        self.host_challenge = cmd.data
        self.card_challenge = card_challenge
        context = cmd.data + card_challenge
        s_enc, s_mac, s_rmac = scp03_session_keys(self.keys, context)
        self._core = SCP03Core(s_enc, s_mac, s_rmac, s16=self.s16)
        cryptogram = scp03_kdf(self._core.s_mac, DDC_CARD_CRYPTOGRAM, context, n * 8)
        self._state = ChannelState.INITIALIZED
        # Amd D §7.1.2: KDD || key info (KVN, 03, i) || card challenge || card cryptogram [|| counter]
        return self.kdd + bytes((self.keys.version, 0x03, self.i)) + card_challenge + cryptogram + seq + SW_OK

    def external_authenticate(self, capdu: bytes) -> bytes:
        n = 16 if self.s16 else 8
        core = self._core
        cmd, err = self._ea_checks(capdu, 2 * n)
        if cmd is None or core is None:
            return err or _sw(0x6985)
        sl = SecurityLevel(cmd.p1)
        if (SecurityLevel.R_MAC in sl and not self.i & SCP03_I_RMAC) or (
            SecurityLevel.R_ENC in sl and not self.i & SCP03_I_RENC
        ):
            return _sw(0x6A86)
        context = self.host_challenge + self.card_challenge
        expected = scp03_kdf(core.s_mac, DDC_HOST_CRYPTOGRAM, context, n * 8)
        if not hmac.compare_digest(expected, cmd.data[:n]):
            return _sw(0x6300)
        # Amd D §7.2: the C-MAC covers the header and Lc as sent (short or extended, ISO 7816-4 §5.1).
        head = bytes((cmd.cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(len(cmd.data), cmd.is_extended) + cmd.data[:n]
        mcv = core.s_mac.cmac(_ZERO16, head)
        if not hmac.compare_digest(mcv[:n], cmd.data[n:]):
            return _sw(0x6982)
        core.mcv = mcv
        core.counter = 0
        core.security_level = self.security_level = sl
        self._state = ChannelState.OPEN
        return SW_OK

    def unwrap_command(self, capdu: bytes) -> bytes:
        """Secured C-APDU -> plain C-APDU (CLA without SM bit). Raises, see module doc."""
        capdu = bytes(capdu)
        core = self._core
        if self._state is not ChannelState.OPEN or core is None or not self.security_level & SecurityLevel.C_MAC:
            cmd = CommandAPDU.from_bytes(capdu)
            if _has_sm(cmd.cla):
                self.reset()
                raise SecureChannelError("secure messaging indicated but no C-MAC session is open")
            if self._state is ChannelState.OPEN and core is not None:
                core.unsecure_command(capdu)  # keeps the counter in step (no C-MAC: nothing to verify)
            return capdu
        try:
            return core.unsecure_command(capdu)
        except GPError:
            self.reset()  # GP 2.3.1 §10.2.3: a secure messaging failure ends the session
            raise

    def decode_put_key(self, data: bytes) -> PutKeyData:
        """Decode PUT KEY data: AES keys under the static DEK (Amd D §7.2), KCVs checked."""
        dek = self.keys.dek
        return decode_put_key(data, lambda enc, n: scp03_decrypt_key(dek, enc, n))

    def wrap_response(self, rapdu: bytes) -> bytes:
        """Plain R-APDU (data || SW) -> secured R-APDU (R-ENC, R-MAC per security level)."""
        core = self._core
        if self._state is not ChannelState.OPEN or core is None:
            return bytes(rapdu)
        return core.secure_response(bytes(rapdu))


class CardSCP02(_CardChannel):
    """Card side of SCP02 (GP 2.3.1 Annex E), explicit initiation (i=0x15, 0x55, ...).

    The 2-byte ``sequence_counter`` is incremented by every INITIALIZE UPDATE.
    """

    LEVELS = SCP02_LEVELS

    def __init__(
        self,
        keys: StaticKeys,
        *,
        i: int = 0x55,
        sd_aid: bytes = ISD_AID,
        sequence_counter: int = 0,
        kdd: bytes = bytes(10),
        card_challenge_random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(keys, sd_aid, kdd, card_challenge_random)
        if len(keys.enc) != 16:
            raise SecureChannelError("SCP02 needs 16-byte (2-key 3DES) keys")
        self.i = i
        self.sequence_counter = sequence_counter
        self._core: SCP02Core | None = None
        self._last_plain = b""

    def __repr__(self) -> str:
        return f"CardSCP02(state={self._state}, security_level=0x{self.security_level:02X}, i=0x{self.i:02X})"

    def initialize_update(self, capdu: bytes) -> bytes:
        cmd, err = self._iu_checks(capdu, 8)
        if cmd is None:
            return err
        if self.sequence_counter >= 0xFFFF:
            return _sw(0x6985)
        self.sequence_counter += 1
        seq = self.sequence_counter.to_bytes(2, "big")
        sk = scp02_session_keys(self.keys, seq)
        core = SCP02Core(sk.enc, sk.c_mac, sk.r_mac, sk.dek, i=self.i)
        if self.i & SCP02_I_PSEUDO_RANDOM:
            card_challenge = scp02_card_challenge(sk.enc, self.sd_aid)
        else:
            card_challenge = bytes(self._random(6))
        self.host_challenge = cmd.data
        self.card_challenge = card_challenge
        self._core = core
        cryptogram = core.cryptogram(cmd.data + seq + card_challenge)
        self._state = ChannelState.INITIALIZED
        # GP 2.3.1 §E.5.1.6: KDD || KVN || 02 || sequence counter || card challenge || card cryptogram
        return self.kdd + bytes((self.keys.version, 0x02)) + seq + card_challenge + cryptogram + SW_OK

    @property
    def session_dek(self) -> bytes:
        """The session DEK, to decrypt PUT KEY data (GP 2.3.1 §E.4.7)."""
        if self._core is None:
            raise SecureChannelError("no session")
        return self._core.dek.key

    def decode_put_key(self, data: bytes) -> PutKeyData:
        """Decode PUT KEY data: 3DES keys under the session DEK (GP 2.3.1 §E.4.7), KCVs checked."""
        dek = self.session_dek
        return decode_put_key(data, lambda enc, _n: scp02_decrypt_key(dek, enc))

    def external_authenticate(self, capdu: bytes) -> bytes:
        core = self._core
        cmd, err = self._ea_checks(capdu, 16)
        if cmd is None or core is None:
            return err or _sw(0x6985)
        seq = self.sequence_counter.to_bytes(2, "big")
        expected = core.cryptogram(seq + self.card_challenge + self.host_challenge)
        if not hmac.compare_digest(expected, cmd.data[:8]):
            return _sw(0x6300)
        # GP 2.3.1 §E.5.2: the C-MAC covers the header and Lc (16, with the MAC) as sent.
        head = bytes((cmd.cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(len(cmd.data), cmd.is_extended) + cmd.data[:8]
        core.icv = bytes(8)
        mac = core.c_mac.retail_mac(head)
        if not hmac.compare_digest(mac, cmd.data[8:]):
            return _sw(0x6982)
        core.icv = mac
        core.ricv = bytes(8)
        core.security_level = self.security_level = SecurityLevel(cmd.p1)
        self._state = ChannelState.OPEN
        return SW_OK

    def unwrap_command(self, capdu: bytes) -> bytes:
        capdu = bytes(capdu)
        core = self._core
        if self._state is not ChannelState.OPEN or core is None or not self.security_level & SecurityLevel.C_MAC:
            cmd = CommandAPDU.from_bytes(capdu)
            if _has_sm(cmd.cla):
                self.reset()
                raise SecureChannelError("secure messaging indicated but no C-MAC session is open")
            return capdu
        try:
            plain, self._last_plain = core.unsecure_command(capdu)
        except GPError:
            self.reset()  # GP 2.3.1 §10.2.3: a secure messaging failure ends the session
            raise
        return plain

    def wrap_response(self, rapdu: bytes) -> bytes:
        core = self._core
        if self._state is not ChannelState.OPEN or core is None:
            return bytes(rapdu)
        return core.secure_response(bytes(rapdu), self._last_plain)
