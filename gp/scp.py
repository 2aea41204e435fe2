"""Host side of the GlobalPlatform secure channels SCP02 and SCP03 (sans-I/O).

* :class:`SCP03` — GP Card Spec 2.3.1 Amendment D v1.2: AES-128/192/256, S8 and
  S16 modes, security levels 0x00/0x01/0x03/0x11/0x13/0x33.
* :class:`SCP02` — GP Card Spec 2.3.1 Annex E: 3DES, i=0x15/0x55 (and the other
  "explicit initiation" variants), security levels 0x00/0x01/0x03/0x11/0x13.

The channel objects are bytes-in/bytes-out: they build the INITIALIZE UPDATE and
EXTERNAL AUTHENTICATE commands, then ``wrap`` plain command APDUs and ``unwrap``
secured response APDUs. They never do I/O. Randomness (the host challenge) comes
from the injectable ``random`` callable.

Pipelining: the platform sends a batch of secured commands before it sees any
response (DESIGN §6). Each ``wrap`` therefore remembers the MAC chaining value and
encryption counter its response needs, and ``unwrap`` consumes them in order, so
``wrap, wrap, wrap, unwrap, unwrap, unwrap`` works exactly like strict alternation.

The card side (:mod:`gp.scp_card`) reuses the session cores defined here.
"""

from __future__ import annotations

import hmac
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from gp.apdu import CommandAPDU
from gp.crypto import AESKey, DES3Key, pad_m2, scp03_kdf, unpad_m2
from gp.errors import (
    APDUError,
    AuthenticationError,
    EncodingError,
    KeyMaterialError,
    MACError,
    SecureChannelError,
    StatusWordError,
)
from gp.keys import StaticKeys, scp02_encrypt_key, scp03_encrypt_key

__all__ = [
    "SCP02",
    "SCP03",
    "SL_C_DEC",
    "SL_C_MAC",
    "SL_R_ENC",
    "SL_R_MAC",
    "SCP02Core",
    "SCP02SessionKeys",
    "SCP03Core",
    "SecuredResponse",
    "StaticKeys",
    "scp02_card_challenge",
    "scp02_session_keys",
    "scp03_card_challenge",
    "scp03_decrypt_response_data",
    "scp03_encrypt_command_data",
    "scp03_mac_command",
    "scp03_session_keys",
    "scp03_verify_rmac",
]

# Security level bits (GP 2.3.1 §11.11.2.1 Table 11-68; Amd D §5.3.1 Table 5-2)
SL_C_MAC = 0x01
SL_C_DEC = 0x02
SL_R_MAC = 0x10
SL_R_ENC = 0x20

SCP03_LEVELS = frozenset({0x00, 0x01, 0x03, 0x11, 0x13, 0x33})
SCP02_LEVELS = frozenset({0x00, 0x01, 0x03, 0x11, 0x13})

# SCP03 data derivation constants (Amd D §6.2.1 Table 6-1)
DDC_CARD_CRYPTOGRAM = 0x00
DDC_HOST_CRYPTOGRAM = 0x01
DDC_CARD_CHALLENGE = 0x02
DDC_S_ENC = 0x04
DDC_S_MAC = 0x06
DDC_S_RMAC = 0x07

# SCP03 "i" parameter bits (Amd D §5.1 Table 5-1)
SCP03_I_PSEUDO_RANDOM = 0x10
SCP03_I_RMAC = 0x20
SCP03_I_RENC = 0x40

# SCP02 "i" parameter bits (GP 2.3.1 §E.1.1 Table E-1)
SCP02_I_3KEYS = 0x01
SCP02_I_UNMODIFIED_APDU = 0x02
SCP02_I_EXPLICIT = 0x04
SCP02_I_ICV_AID = 0x08
SCP02_I_ICV_ENCRYPT = 0x10
SCP02_I_RMAC = 0x20
SCP02_I_PSEUDO_RANDOM = 0x40

# SCP02 session key derivation constants (GP 2.3.1 §E.4.1)
SCP02_C_MAC = b"\x01\x01"
SCP02_R_MAC = b"\x01\x02"
SCP02_DEK = b"\x01\x81"
SCP02_ENC = b"\x01\x82"

_ZERO16 = bytes(16)
_ZERO8 = bytes(8)


@dataclass(frozen=True)
class SecuredResponse:
    """A response unwrapped by a host channel, and whether the card's R-MAC covered it.

    ``authenticated`` is False for status words that carry no R-MAC (Amd D §6.2.5, GP 2.3.1
    §E.4.5: only 9000 and the warnings 62xx/63xx do), for the bare EXTERNAL AUTHENTICATE answer,
    and at security levels without R-MAC. Such an answer could have come from anyone on the
    path, so nothing may be concluded from it but "not confirmed".
    """

    data: bytes
    sw: int
    authenticated: bool

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")


def _rmac_expected(sw: int) -> bool:
    """Amd D §6.2.5: R-MAC only on 9000 and on warnings 62xx/63xx."""
    return sw == 0x9000 or (sw >> 8) in (0x62, 0x63)


def _sm_cla(cla: int) -> int:
    """Set the secure messaging indication in CLA (GP 2.3.1 §11.1.4)."""
    if cla & 0x40:  # further interindustry class: b6 indicates SM
        return cla | 0x20
    return cla | 0x04


def _has_sm(cla: int) -> bool:
    return bool(cla & 0x20) if cla & 0x40 else bool(cla & 0x04)


def _plain_cla(cla: int) -> int:
    return cla & ~0x20 if cla & 0x40 else cla & ~0x04


def _lc(n: int, extended: bool) -> bytes:
    if extended:
        return b"\x00" + n.to_bytes(2, "big")
    return bytes((n,))


def _le(le: int | None, extended: bool) -> bytes:
    # after an Lc field: short Le is 1 byte, extended Le 2 bytes (ISO 7816-4 §5.1)
    if le is None:
        return b""
    if extended:
        return (le & 0xFFFF).to_bytes(2, "big")
    return bytes((le & 0xFF,))


def _check_fits(n: int, extended: bool, plain_len: int, max_plain: int) -> None:
    limit = 65535 if extended else 255
    if n > limit:
        raise APDUError(
            f"secured data field would be {n} bytes, more than a {'extended' if extended else 'short'} "
            f"Lc allows ({limit}); at this security level at most {max_plain} plain bytes fit "
            f"(got {plain_len}){'' if extended else '; use extended length'}"
        )


def _hexkey(key: AESKey | DES3Key) -> str:
    return key.key.hex().upper()


# ===========================================================================
# SCP03


def scp03_session_keys(keys: StaticKeys, context: bytes) -> tuple[bytes, bytes, bytes]:
    """(S-ENC, S-MAC, S-RMAC) for ``context`` = host challenge || card challenge (Amd D §6.2.1)."""
    bits = len(keys.enc) * 8
    return (
        scp03_kdf(keys.enc, DDC_S_ENC, context, bits),
        scp03_kdf(keys.mac, DDC_S_MAC, context, bits),
        scp03_kdf(keys.mac, DDC_S_RMAC, context, bits),
    )


def scp03_card_challenge(static_enc: bytes, sequence_counter: bytes, sd_aid: bytes, s16: bool = False) -> bytes:
    """Pseudo-random card challenge (Amd D §6.2.2.1): KDF(Key-ENC, 02, counter || SD AID)."""
    return scp03_kdf(static_enc, DDC_CARD_CHALLENGE, sequence_counter + sd_aid, 128 if s16 else 64)


class SCP03Core:
    """SCP03 session cryptography shared by host and card (Amd D §6.2.3-6.2.7).

    Holds the session keys, the MAC chaining value and the encryption counter.
    ``counter`` is the value used by the most recent command (0 before the first).
    """

    __slots__ = ("counter", "mac_len", "mcv", "s_enc", "s_mac", "s_rmac", "security_level")

    def __init__(self, s_enc: bytes, s_mac: bytes, s_rmac: bytes, *, s16: bool = False,
                 mcv: bytes = _ZERO16, counter: int = 0, security_level: int = 0) -> None:
        self.s_enc = AESKey(s_enc)
        self.s_mac = AESKey(s_mac)
        self.s_rmac = AESKey(s_rmac)
        self.mac_len = 16 if s16 else 8
        self.mcv = mcv
        self.counter = counter
        self.security_level = security_level

    def __repr__(self) -> str:
        return f"SCP03Core(security_level=0x{self.security_level:02X}, counter={self.counter}, keys=<hidden>)"

    # --- primitives ------------------------------------------------------

    def command_icv(self, counter: int) -> bytes:
        """Amd D §6.2.6: ICV = AES(S-ENC, counter as 16 bytes)."""
        return self.s_enc.ecb_encrypt(counter.to_bytes(16, "big"))

    def response_icv(self, counter: int) -> bytes:
        """Amd D §6.2.7: ICV = AES(S-ENC, 80 || counter as 15 bytes)."""
        return self.s_enc.ecb_encrypt(b"\x80" + counter.to_bytes(15, "big"))

    def encrypt_command_data(self, data: bytes, counter: int) -> bytes:
        return self.s_enc.cbc_encrypt(pad_m2(data), self.command_icv(counter))

    def decrypt_command_data(self, data: bytes, counter: int) -> bytes:
        return unpad_m2(self.s_enc.cbc_decrypt(data, self.command_icv(counter)))

    def encrypt_response_data(self, data: bytes, counter: int) -> bytes:
        return self.s_enc.cbc_encrypt(pad_m2(data), self.response_icv(counter))

    def decrypt_response_data(self, data: bytes, counter: int) -> bytes:
        return unpad_m2(self.s_enc.cbc_decrypt(data, self.response_icv(counter)))

    def rmac(self, mcv: bytes, data: bytes, sw: bytes) -> bytes:
        """Amd D §6.2.5: R-MAC = CMAC(S-RMAC, MCV || response data || SW)."""
        return self.s_rmac.cmac(mcv, data, sw)[: self.mac_len]

    def max_data_length(self, extended: bool = False) -> int:
        limit = 65535 if extended else 255
        sl = self.security_level
        room = limit - (self.mac_len if sl & SL_C_MAC else 0)
        if sl & SL_C_DEC:
            return room // 16 * 16 - 1  # ISO 9797-1 M2 always adds at least one byte
        return room

    # --- host ------------------------------------------------------------

    def secure_command(self, cmd: CommandAPDU) -> tuple[bytes, bytes, int]:
        """Host: wrap a plain command. Returns (secured APDU, MCV, counter) for the response."""
        sl = self.security_level
        data = cmd.data
        extended = cmd.is_extended
        if sl & SL_C_MAC:
            # refuse before touching the counter or the MCV, so the channel stays usable
            enc_len = (len(data) // 16 + 1) * 16 if (sl & SL_C_DEC and data) else len(data)
            _check_fits(enc_len + self.mac_len, extended, len(data), self.max_data_length(extended))
        if sl & SL_C_DEC:
            # Amd D §6.2.6: the counter is incremented for every command once C-DEC is on,
            # also for commands without a data field (which are then not encrypted).
            self.counter += 1
            if data:
                data = self.encrypt_command_data(data, self.counter)
        if not sl & SL_C_MAC:
            return cmd.to_bytes(), self.mcv, self.counter
        n = len(data) + self.mac_len
        # Amd D §6.2.4: C-MAC over MCV || CLA (SM bit set) INS P1 P2 Lc || data field
        head = bytes((_sm_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2)) + _lc(n, extended) + data
        self.mcv = self.s_mac.cmac(self.mcv, head)
        return head + self.mcv[: self.mac_len] + _le(cmd.le, extended), self.mcv, self.counter

    def verify_response(self, rapdu: bytes, mcv: bytes, counter: int) -> bytes:
        """Host: check the R-MAC and decrypt R-ENC data; returns plain data || SW."""
        if len(rapdu) < 2:
            raise APDUError(f"response APDU too short: {len(rapdu)} bytes")
        sl = self.security_level
        if not sl & SL_R_MAC:
            return rapdu
        swb = rapdu[-2:]
        sw = (swb[0] << 8) | swb[1]
        data = rapdu[:-2]
        if not _rmac_expected(sw):
            if data:
                raise MACError(f"response with SW {sw:04X} carries data but no R-MAC is defined for it")
            return rapdu
        ml = self.mac_len
        if len(data) < ml:
            raise MACError(f"response too short for an R-MAC ({len(data)} data bytes)")
        body, mac = data[:-ml], data[-ml:]
        if not hmac.compare_digest(self.rmac(mcv, body, swb), mac):
            raise MACError("R-MAC does not verify")
        if sl & SL_R_ENC and body:
            if len(body) % 16:
                raise MACError("R-ENC response data is not a multiple of the AES block")
            try:
                body = self.decrypt_response_data(body, counter)
            except EncodingError as exc:
                raise SecureChannelError("R-ENC response data has bad padding") from exc
        return body + swb

    # --- card ------------------------------------------------------------

    def unsecure_command(self, raw: bytes) -> bytes:
        """Card: verify C-MAC and decrypt C-DEC; returns the plain command APDU bytes."""
        sl = self.security_level
        cmd = CommandAPDU.from_bytes(raw)
        if sl & SL_C_DEC:
            self.counter += 1
        if not sl & SL_C_MAC:
            return raw
        if not _has_sm(cmd.cla):
            raise SecureChannelError("command without secure messaging in a C-MAC session")
        ml = self.mac_len
        if len(cmd.data) < ml:
            raise MACError("secured command too short for a C-MAC")
        body, mac = cmd.data[:-ml], cmd.data[-ml:]
        extended = cmd.is_extended
        head = bytes((cmd.cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(len(cmd.data), extended) + body
        new_mcv = self.s_mac.cmac(self.mcv, head)
        if not hmac.compare_digest(new_mcv[:ml], mac):
            raise MACError("C-MAC does not verify")
        self.mcv = new_mcv
        if sl & SL_C_DEC and body:
            if len(body) % 16:
                raise MACError("C-DEC data is not a multiple of the AES block")
            try:
                body = self.decrypt_command_data(body, self.counter)
            except EncodingError as exc:
                raise MACError("C-DEC data has bad padding") from exc
        plain = CommandAPDU(_plain_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2, body, cmd.le,
                            extended=extended and len(body) <= 255 and (cmd.le or 0) <= 256)
        return plain.to_bytes()

    def secure_response(self, rapdu: bytes) -> bytes:
        """Card: encrypt (R-ENC) and append the R-MAC to a plain response."""
        if len(rapdu) < 2:
            raise APDUError(f"response APDU too short: {len(rapdu)} bytes")
        sl = self.security_level
        if not sl & SL_R_MAC:
            return rapdu
        swb = rapdu[-2:]
        sw = (swb[0] << 8) | swb[1]
        if not _rmac_expected(sw):
            return swb  # Amd D §6.2.5: no R-MAC, and no data, with error status words
        data = rapdu[:-2]
        if sl & SL_R_ENC and data:
            data = self.encrypt_response_data(data, self.counter)
        return data + self.rmac(self.mcv, data, swb) + swb


class _Pending:
    """Per-response context remembered by ``wrap`` for the matching ``unwrap``."""

    __slots__ = ("counter", "mcv", "plain")

    def __init__(self, mcv: bytes, counter: int, plain: bytes = b"") -> None:
        self.mcv = mcv
        self.counter = counter
        self.plain = plain


def _parse_iu_response(response: bytes) -> tuple[bytes, int]:
    response = bytes(response)
    if len(response) < 2:
        raise APDUError("INITIALIZE UPDATE response shorter than a status word")
    sw = int.from_bytes(response[-2:], "big")
    if sw != 0x9000:
        raise StatusWordError(sw, f"INITIALIZE UPDATE failed with SW {sw:04X}")
    return response[:-2], sw


def _state_args(keys: Any, state: Any) -> tuple[StaticKeys | None, dict[str, Any]]:
    if state is None and isinstance(keys, dict):
        keys, state = None, keys
    if not isinstance(state, dict):
        raise SecureChannelError("session state must be the dict returned by session_state()")
    if keys is not None and not isinstance(keys, StaticKeys):
        raise KeyMaterialError("keys must be a gp.keys.StaticKeys or None")
    return keys, state


class _HostChannel:
    """Shared host behaviour: state machine, challenge, pipelined unwrap, state export."""

    SCP: ClassVar[int] = 0
    LEVELS: ClassVar[frozenset[int]] = frozenset()

    def __init__(self, keys: StaticKeys | None, security_level: int, host_challenge: bytes | None,
                 random: Callable[[int], bytes], challenge_len: int) -> None:
        if keys is not None and not isinstance(keys, StaticKeys):
            raise KeyMaterialError("keys must be a gp.keys.StaticKeys")
        if security_level not in self.LEVELS:
            raise SecureChannelError(
                f"security level 0x{security_level:02X} not supported by SCP0{self.SCP} "
                f"(one of {', '.join(f'0x{x:02X}' for x in sorted(self.LEVELS))})"
            )
        self._keys = keys
        self.security_level = security_level
        if host_challenge is None:
            host_challenge = random(challenge_len)
        host_challenge = bytes(host_challenge)
        if len(host_challenge) != challenge_len:
            raise SecureChannelError(f"host challenge must be {challenge_len} bytes, got {len(host_challenge)}")
        self.host_challenge = host_challenge
        self.card_challenge = b""
        self.kdd = b""
        self.key_version = keys.version if keys is not None else 0
        self.requested_key_version = self.key_version
        self.key_version_mismatch = False
        self._state = "new"  # new -> initialized (IU built) -> authenticated
        self._pending: deque[_Pending] = deque()
        self._closed_reason = ""

    @property
    def is_authenticated(self) -> bool:
        return self._state == "authenticated"

    def _require_auth(self) -> None:
        if self._state != "authenticated":
            detail = f" ({self._closed_reason})" if self._closed_reason else ""
            raise SecureChannelError(f"secure channel is not open{detail}")

    def _close(self, reason: str) -> None:
        self._state = "closed"
        self._closed_reason = reason
        self._pending.clear()

    def initialize_update(self) -> bytes:
        """The INITIALIZE UPDATE command: 80 50 KVN 00 Lc host-challenge 00 (GP 2.3.1 §11.13)."""
        if self._state not in ("new", "initialized"):
            raise SecureChannelError("INITIALIZE UPDATE already answered; use a new channel object")
        self._state = "initialized"
        hc = self.host_challenge
        return bytes((0x80, 0x50, self.key_version, 0x00, len(hc))) + hc + b"\x00"

    def _initialize_update_answer(self, response: bytes) -> tuple[StaticKeys, bytes]:
        """The static keys and the INITIALIZE UPDATE response data, once the channel may use them."""
        if self._state != "initialized":
            raise SecureChannelError("external_authenticate() needs initialize_update() first")
        if self._keys is None:
            raise KeyMaterialError("static keys are needed to authenticate")
        data, _ = _parse_iu_response(response)
        return self._keys, data

    def _note_key_version(self, keys: StaticKeys, kvn: int) -> None:
        """Some cards ignore P1 of INITIALIZE UPDATE and answer with their current key version.
        That is accepted and recorded (``requested_key_version``); the card cryptogram, checked
        next with the host's keys, still decides (GP 2.3.1 §11.13.2)."""
        self.requested_key_version = keys.version
        self.key_version_mismatch = bool(keys.version) and kvn != keys.version

    def _pop_pending(self) -> _Pending | None:
        return self._pending.popleft() if self._pending else None

    def _verify(self, rapdu: bytes, pending: _Pending) -> bytes:
        raise NotImplementedError

    def unwrap(self, rapdu: bytes) -> bytes:
        """Secured R-APDU (data || SW) -> plain data || SW. MACError on a bad R-MAC; any
        verification failure closes the channel. An error status word comes back as it is,
        unauthenticated: use :meth:`unwrap_response` where that matters."""
        return self.unwrap_response(rapdu).to_bytes()

    def unwrap_response(self, rapdu: bytes) -> SecuredResponse:
        """Like :meth:`unwrap`, and says whether the card's R-MAC covered data and status word."""
        self._require_auth()
        core: Any = getattr(self, "_core", None)
        assert core is not None
        rapdu = bytes(rapdu)
        if len(rapdu) < 2:
            raise APDUError(f"response APDU too short: {len(rapdu)} bytes")
        sw = int.from_bytes(rapdu[-2:], "big")
        if not core.security_level & SL_R_MAC:
            return SecuredResponse(rapdu[:-2], sw, authenticated=False)
        pending = self._pop_pending()
        if pending is None:
            # Only the EXTERNAL AUTHENTICATE response (a bare SW) can arrive here.
            if len(rapdu) == 2:
                return SecuredResponse(b"", sw, authenticated=False)
            raise SecureChannelError("response without a wrapped command to match it")
        try:
            plain = self._verify(rapdu, pending)
        except (MACError, SecureChannelError) as exc:
            self._close(str(exc))
            raise
        return SecuredResponse(plain[:-2], sw, authenticated=_rmac_expected(sw))


class SCP03(_HostChannel):
    """Host side of SCP03 (GP Amd D v1.2)."""

    SCP = 3
    LEVELS = SCP03_LEVELS

    def __init__(self, keys: StaticKeys, security_level: int = 0x33, host_challenge: bytes | None = None,
                 s16: bool = False, sd_aid: bytes | None = None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.s16 = bool(s16)
        super().__init__(keys, security_level, host_challenge, random, 16 if s16 else 8)
        self.sd_aid = bytes(sd_aid) if sd_aid is not None else None
        self.i: int | None = None
        self.sequence_counter: bytes = b""
        self.card_challenge_verified: bool | None = None
        self._core: SCP03Core | None = None

    def __repr__(self) -> str:
        return (f"SCP03(state={self._state}, security_level=0x{self.security_level:02X}, "
                f"s16={self.s16}, kvn=0x{self.key_version:02X})")

    def external_authenticate(self, response: bytes) -> bytes:
        """Check the card cryptogram and return the EXTERNAL AUTHENTICATE command (Amd D §7.1, §7.2)."""
        keys, data = self._initialize_update_answer(response)
        n = 16 if self.s16 else 8
        base = 10 + 3 + 2 * n
        if len(data) not in (base, base + 3):
            raise SecureChannelError(
                f"INITIALIZE UPDATE response of {len(data)} bytes does not fit SCP03 "
                f"{'S16' if self.s16 else 'S8'} ({base} or {base + 3} expected)"
            )
        kdd, kvn, scp, i = data[:10], data[10], data[11], data[12]
        card_challenge = data[13 : 13 + n]
        card_cryptogram = data[13 + n : 13 + 2 * n]
        seq = data[13 + 2 * n :]
        if scp != 0x03:
            raise SecureChannelError(f"card answered for SCP{scp:02X}, expected SCP03")
        self._note_key_version(keys, kvn)
        if bool(i & SCP03_I_PSEUDO_RANDOM) != bool(seq):
            raise SecureChannelError("sequence counter presence does not match i (pseudo-random challenge bit)")
        if self.security_level & SL_R_MAC and not i & SCP03_I_RMAC:
            raise SecureChannelError(f"card (i=0x{i:02X}) does not support R-MAC")
        if self.security_level & SL_R_ENC and not i & SCP03_I_RENC:
            raise SecureChannelError(f"card (i=0x{i:02X}) does not support R-ENC")
        self.kdd, self.key_version, self.i = kdd, kvn, i
        self.card_challenge, self.sequence_counter = card_challenge, seq
        context = self.host_challenge + card_challenge
        s_enc, s_mac, s_rmac = scp03_session_keys(keys, context)
        core = SCP03Core(s_enc, s_mac, s_rmac, s16=self.s16)
        bits = n * 8
        expected = scp03_kdf(core.s_mac, DDC_CARD_CRYPTOGRAM, context, bits)
        if not hmac.compare_digest(expected, card_cryptogram):
            self._close("card cryptogram did not verify")
            raise AuthenticationError("card cryptogram does not verify: wrong keys or wrong card (do not retry)")
        if i & SCP03_I_PSEUDO_RANDOM and self.sd_aid is not None:
            if not hmac.compare_digest(
                scp03_card_challenge(keys.enc, seq, self.sd_aid, self.s16), card_challenge
            ):
                self._close("pseudo-random card challenge did not verify")
                raise AuthenticationError("pseudo-random card challenge does not match the sequence counter")
            self.card_challenge_verified = True
        host_cryptogram = scp03_kdf(core.s_mac, DDC_HOST_CRYPTOGRAM, context, bits)
        # Amd D §7.2: EXTERNAL AUTHENTICATE 84 82 SL 00 Lc host-cryptogram C-MAC, MCV = 0
        head = bytes((0x84, 0x82, self.security_level, 0x00, 2 * n)) + host_cryptogram
        core.mcv = core.s_mac.cmac(_ZERO16, head)
        ea = head + core.mcv[:n]
        core.security_level = self.security_level
        self._core = core
        self._state = "authenticated"
        return ea

    def wrap(self, capdu: bytes) -> bytes:
        """Plain C-APDU -> secured C-APDU at the active security level."""
        self._require_auth()
        core = self._core
        assert core is not None
        secured, mcv, counter = core.secure_command(CommandAPDU.from_bytes(capdu))
        if core.security_level & SL_R_MAC:
            self._pending.append(_Pending(mcv, counter))
        return secured

    def _verify(self, rapdu: bytes, pending: _Pending) -> bytes:
        assert self._core is not None
        return self._core.verify_response(rapdu, pending.mcv, pending.counter)

    def max_data_length(self, extended: bool = False) -> int:
        """Largest plain data field that still fits a short (255) or extended (65535) Lc once wrapped."""
        core = SCP03Core(_ZERO16, _ZERO16, _ZERO16, s16=self.s16, security_level=self.security_level)
        return core.max_data_length(extended)

    def encrypt_key(self, key: bytes) -> bytes:
        """PUT KEY key encryption: AES-CBC, zero ICV, static DEK (Amd D §7.2)."""
        if self._keys is None:
            raise KeyMaterialError("encrypt_key needs the static keys (DEK); pass keys to from_session_state")
        return scp03_encrypt_key(self._keys.dek, key)

    # --- persistence -----------------------------------------------------

    def session_state(self) -> dict[str, str | int]:
        """Everything needed to continue this channel in another process (contains session keys!)."""
        st: dict[str, str | int] = {
            "scp": 3,
            "state": self._state,
            "security_level": self.security_level,
            "s16": int(self.s16),
            "kvn": self.key_version,
            "host_challenge": self.host_challenge.hex().upper(),
            "card_challenge": self.card_challenge.hex().upper(),
            "kdd": self.kdd.hex().upper(),
            "sequence_counter": self.sequence_counter.hex().upper(),
            "sd_aid": self.sd_aid.hex().upper() if self.sd_aid is not None else "",
            "i": -1 if self.i is None else self.i,
        }
        core = self._core
        if core is not None:
            st.update(
                s_enc=_hexkey(core.s_enc), s_mac=_hexkey(core.s_mac), s_rmac=_hexkey(core.s_rmac),
                mcv=core.mcv.hex().upper(), counter=core.counter,
                pending=",".join(f"{p.mcv.hex().upper()}:{p.counter}" for p in self._pending),
            )
        return st

    @classmethod
    def from_session_state(cls, keys: StaticKeys | dict[str, Any] | None = None,
                           state: dict[str, Any] | None = None) -> SCP03:
        """Rebuild a channel from :meth:`session_state`. ``keys`` is needed before
        authentication and for :meth:`encrypt_key`; it may be None afterwards, and
        ``from_session_state(state)`` is accepted too."""
        keys, state = _state_args(keys, state)
        try:
            if int(state["scp"]) != 3:
                raise SecureChannelError("session state is not an SCP03 state")
            ch = cls.__new__(cls)
            hc = bytes.fromhex(state["host_challenge"])
            _HostChannel.__init__(ch, keys, int(state["security_level"]), hc, os.urandom, len(hc))
            ch.s16 = bool(int(state["s16"]))
            ch.key_version = int(state["kvn"])
            ch.card_challenge = bytes.fromhex(state["card_challenge"])
            ch.kdd = bytes.fromhex(state["kdd"])
            ch.sequence_counter = bytes.fromhex(state["sequence_counter"])
            ch.sd_aid = bytes.fromhex(state["sd_aid"]) if state["sd_aid"] else None
            ch.i = None if int(state["i"]) < 0 else int(state["i"])
            ch.card_challenge_verified = None
            ch._core = None
            ch._state = str(state["state"])
            if ch._state not in ("new", "initialized", "authenticated", "closed"):
                raise SecureChannelError(f"unknown channel state {ch._state!r}")
            if ch._state == "authenticated":
                core = SCP03Core(bytes.fromhex(state["s_enc"]), bytes.fromhex(state["s_mac"]),
                                 bytes.fromhex(state["s_rmac"]), s16=ch.s16,
                                 mcv=bytes.fromhex(state["mcv"]), counter=int(state["counter"]),
                                 security_level=ch.security_level)
                ch._core = core
                for item in filter(None, str(state.get("pending", "")).split(",")):
                    mcv_hex, counter = item.split(":")
                    ch._pending.append(_Pending(bytes.fromhex(mcv_hex), int(counter)))
            elif ch._state in ("new", "initialized") and keys is None:
                raise KeyMaterialError("an unauthenticated channel state needs the static keys")
            return ch
        except (KeyError, TypeError, ValueError) as exc:
            raise SecureChannelError(f"malformed SCP03 session state: {type(exc).__name__}") from None


# --- SCP03 known-answer helpers (public, used by tests and tools) -----------


def scp03_encrypt_command_data(s_enc: bytes, counter: int, data: bytes) -> bytes:
    """C-DEC of a command data field with encryption counter ``counter`` (Amd D §6.2.6)."""
    return SCP03Core(s_enc, s_enc, s_enc).encrypt_command_data(data, counter)


def scp03_decrypt_response_data(s_enc: bytes, counter: int, ciphertext: bytes) -> bytes:
    """R-ENC decryption with the counter of the matching command (Amd D §6.2.7)."""
    return SCP03Core(s_enc, s_enc, s_enc).decrypt_response_data(ciphertext, counter)


def scp03_mac_command(s_mac: bytes, mcv: bytes, apdu: bytes, s16: bool = False) -> tuple[bytes, bytes]:
    """C-MAC an APDU as is (CLA untouched): returns (APDU with Lc+MAC appended, new MCV)."""
    core = SCP03Core(s_mac, s_mac, s_mac, s16=s16, mcv=bytes(mcv), security_level=SL_C_MAC)
    cmd = CommandAPDU.from_bytes(apdu)
    n = len(cmd.data) + core.mac_len
    head = cmd.header() + _lc(n, cmd.is_extended) + cmd.data
    new_mcv = core.s_mac.cmac(core.mcv, head)
    return head + new_mcv[: core.mac_len] + _le(cmd.le, cmd.is_extended), new_mcv


def scp03_verify_rmac(s_rmac: bytes, mcv: bytes, response: bytes, s16: bool = False) -> bytes:
    """Verify the R-MAC of ``response`` (data || R-MAC || SW); returns data || SW or raises MACError."""
    core = SCP03Core(s_rmac, s_rmac, s_rmac, s16=s16, security_level=SL_C_MAC | SL_R_MAC)
    return core.verify_response(bytes(response), bytes(mcv), 0)


# ===========================================================================
# SCP02


class SCP02SessionKeys:
    """SCP02 session keys (GP 2.3.1 §E.4.1); repr hides the key bytes."""

    __slots__ = ("c_mac", "dek", "enc", "r_mac")

    def __init__(self, enc: bytes, c_mac: bytes, r_mac: bytes, dek: bytes) -> None:
        self.enc = enc
        self.c_mac = c_mac
        self.r_mac = r_mac
        self.dek = dek

    def __repr__(self) -> str:
        return "SCP02SessionKeys(<hidden>)"


def _scp02_derive(static: bytes, constant: bytes, sequence_counter: bytes) -> bytes:
    # GP 2.3.1 §E.4.1: 3DES-CBC (zero ICV) of constant(2) || sequence counter(2) || 00*12
    return DES3Key(static).cbc_encrypt(constant + sequence_counter + bytes(12))


def scp02_session_keys(keys: StaticKeys, sequence_counter: bytes) -> SCP02SessionKeys:
    """Derive S-ENC, C-MAC, R-MAC and DEK session keys from the 2-byte sequence counter."""
    if len(sequence_counter) != 2:
        raise SecureChannelError("SCP02 sequence counter must be 2 bytes")
    return SCP02SessionKeys(
        enc=_scp02_derive(keys.enc, SCP02_ENC, sequence_counter),
        c_mac=_scp02_derive(keys.mac, SCP02_C_MAC, sequence_counter),
        r_mac=_scp02_derive(keys.mac, SCP02_R_MAC, sequence_counter),
        dek=_scp02_derive(keys.dek, SCP02_DEK, sequence_counter),
    )


def scp02_card_challenge(s_enc: bytes, sd_aid: bytes) -> bytes:
    """Pseudo-random SCP02 card challenge (GP 2.3.1 §E.4.2.1, i bit 0x40): the first
    6 bytes of a MAC (ISO 9797-1 alg. 3, zero ICV) over the SD AID with S-ENC."""
    return DES3Key(s_enc).retail_mac(sd_aid)[:6]


class SCP02Core:
    """SCP02 session cryptography shared by host and card (GP 2.3.1 §E.4.3-E.4.7)."""

    __slots__ = ("c_mac", "dek", "enc", "i", "icv", "r_mac", "ricv", "security_level")

    def __init__(self, enc: bytes, c_mac: bytes, r_mac: bytes, dek: bytes, *, i: int,
                 icv: bytes = _ZERO8, ricv: bytes = _ZERO8, security_level: int = 0) -> None:
        self.enc = DES3Key(enc)
        self.c_mac = DES3Key(c_mac)
        self.r_mac = DES3Key(r_mac)
        self.dek = DES3Key(dek)
        self.i = i
        self.icv = icv  # last C-MAC (zero before EXTERNAL AUTHENTICATE)
        self.ricv = ricv  # last R-MAC
        self.security_level = security_level

    def __repr__(self) -> str:
        return f"SCP02Core(security_level=0x{self.security_level:02X}, i=0x{self.i:02X}, keys=<hidden>)"

    def cryptogram(self, data: bytes) -> bytes:
        """GP 2.3.1 §E.4.2: full 3DES MAC with S-ENC, zero ICV, M2 padding."""
        return self.enc.full_mac(data)

    def next_icv(self) -> bytes:
        """GP 2.3.1 §E.4.4: the previous C-MAC, DES-encrypted with C-MAC key K1 when i has 0x10."""
        if self.icv == _ZERO8:
            return _ZERO8
        if self.i & SCP02_I_ICV_ENCRYPT:
            return self.c_mac.des_ecb_encrypt_k1(self.icv)
        return self.icv

    def compute_cmac(self, mac_input: bytes) -> bytes:
        self.icv = self.c_mac.retail_mac(mac_input, self.next_icv())
        return self.icv

    def max_data_length(self, extended: bool = False) -> int:
        limit = 65535 if extended else 255
        sl = self.security_level
        room = limit - (8 if sl & SL_C_MAC else 0)
        if sl & SL_C_DEC:
            return room // 8 * 8 - 1
        return room

    def _rmac_input(self, plain_cmd: bytes, data: bytes, sw: bytes) -> bytes:
        # GP 2.3.1 §E.4.5: R-MAC over the clear command (header, Lc, data; no Le, no
        # C-MAC), then Li, the clear response data and the status word.
        return plain_cmd + bytes((len(data) & 0xFF,)) + data + sw

    def secure_command(self, cmd: CommandAPDU) -> tuple[bytes, bytes]:
        """Host: wrap. Returns (secured APDU, clear command bytes for the R-MAC)."""
        sl = self.security_level
        extended = cmd.is_extended
        plain_for_rmac = cmd.header() + (_lc(len(cmd.data), extended) + cmd.data if cmd.data else b"")
        if not sl & SL_C_MAC:
            return cmd.to_bytes(), plain_for_rmac
        data = cmd.data
        enc_len = (len(data) // 8 + 1) * 8 if (sl & SL_C_DEC and data) else len(data)
        n = enc_len + 8
        _check_fits(n, extended, len(data), self.max_data_length(extended))
        cla = _sm_cla(cmd.cla)
        if self.i & SCP02_I_UNMODIFIED_APDU:
            mac_input = cmd.header() + (_lc(len(data), extended) if data else b"") + data
        else:
            # §E.4.4: modified header: CLA with SM bit, Lc including the 8 C-MAC bytes
            mac_input = bytes((cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(len(data) + 8, extended) + data
        mac = self.compute_cmac(mac_input)
        if sl & SL_C_DEC and data:
            # §E.4.6: 3DES-CBC, zero ICV, always padded
            data = self.enc.cbc_encrypt(pad_m2(data, 8))
        out = bytes((cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(n, extended) + data + mac + _le(cmd.le, extended)
        return out, plain_for_rmac

    def verify_response(self, rapdu: bytes, plain_cmd: bytes) -> bytes:
        if len(rapdu) < 2:
            raise APDUError(f"response APDU too short: {len(rapdu)} bytes")
        if not self.security_level & SL_R_MAC:
            return rapdu
        swb = rapdu[-2:]
        sw = (swb[0] << 8) | swb[1]
        data = rapdu[:-2]
        if not _rmac_expected(sw):
            if data:
                raise MACError(f"response with SW {sw:04X} carries data but no R-MAC is defined for it")
            return rapdu
        if len(data) < 8:
            raise MACError("response too short for an R-MAC")
        body, mac = data[:-8], data[-8:]
        expected = self.r_mac.retail_mac(self._rmac_input(plain_cmd, body, swb), self.ricv)
        if not hmac.compare_digest(expected, mac):
            raise MACError("R-MAC does not verify")
        self.ricv = expected
        return body + swb

    def unsecure_command(self, raw: bytes) -> tuple[bytes, bytes]:
        """Card: verify C-MAC, decrypt; returns (plain APDU, clear command bytes for the R-MAC)."""
        sl = self.security_level
        cmd = CommandAPDU.from_bytes(raw)
        if not sl & SL_C_MAC:
            extended = cmd.is_extended
            return raw, cmd.header() + (_lc(len(cmd.data), extended) + cmd.data if cmd.data else b"")
        if not _has_sm(cmd.cla):
            raise SecureChannelError("command without secure messaging in a C-MAC session")
        if len(cmd.data) < 8:
            raise MACError("secured command too short for a C-MAC")
        body, mac = cmd.data[:-8], cmd.data[-8:]
        if sl & SL_C_DEC and body:
            if len(body) % 8:
                raise MACError("C-DEC data is not a multiple of the DES block")
            try:
                body = unpad_m2(self.enc.cbc_decrypt(body), 8)
            except EncodingError as exc:
                raise MACError("C-DEC data has bad padding") from exc
        plain_cla = _plain_cla(cmd.cla)
        extended = cmd.is_extended
        short_ok = len(body) <= 255 and (cmd.le or 0) <= 256
        plain = CommandAPDU(plain_cla, cmd.ins, cmd.p1, cmd.p2, body, cmd.le, extended=extended and short_ok)
        if self.i & SCP02_I_UNMODIFIED_APDU:
            mac_input = plain.header() + (_lc(len(body), extended) if body else b"") + body
        else:
            mac_input = bytes((cmd.cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(len(body) + 8, extended) + body
        expected = self.c_mac.retail_mac(mac_input, self.next_icv())
        if not hmac.compare_digest(expected, mac):
            raise MACError("C-MAC does not verify")
        self.icv = expected
        return plain.to_bytes(), plain.header() + (_lc(len(body), extended) + body if body else b"")

    def secure_response(self, rapdu: bytes, plain_cmd: bytes) -> bytes:
        if len(rapdu) < 2:
            raise APDUError(f"response APDU too short: {len(rapdu)} bytes")
        if not self.security_level & SL_R_MAC:
            return rapdu
        swb = rapdu[-2:]
        sw = (swb[0] << 8) | swb[1]
        if not _rmac_expected(sw):
            return swb
        data = rapdu[:-2]
        self.ricv = self.r_mac.retail_mac(self._rmac_input(plain_cmd, data, swb), self.ricv)
        return data + self.ricv + swb


class SCP02(_HostChannel):
    """Host side of SCP02 (GP Card Spec 2.3.1 Annex E), explicit initiation."""

    SCP = 2
    LEVELS = SCP02_LEVELS

    def __init__(self, keys: StaticKeys, security_level: int = 0x03, host_challenge: bytes | None = None,
                 i: int = 0x55, sd_aid: bytes | None = None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        if len(keys.enc) != 16:
            raise KeyMaterialError("SCP02 needs 16-byte (2-key 3DES) keys")
        if not i & SCP02_I_EXPLICIT or i & SCP02_I_ICV_AID:
            raise SecureChannelError(f"SCP02 i=0x{i:02X} not supported (explicit initiation, zero ICV only)")
        if security_level & SL_R_MAC and not i & SCP02_I_RMAC:
            # R-MAC is still computed as in §E.4.5; the card must agree (see gp.scp_card).
            pass
        super().__init__(keys, security_level, host_challenge, random, 8)
        self.i = i
        self.sd_aid = bytes(sd_aid) if sd_aid is not None else None
        self.sequence_counter = b""
        self.card_challenge_verified: bool | None = None
        self._core: SCP02Core | None = None

    def __repr__(self) -> str:
        return (f"SCP02(state={self._state}, security_level=0x{self.security_level:02X}, "
                f"i=0x{self.i:02X}, kvn=0x{self.key_version:02X})")

    def external_authenticate(self, response: bytes) -> bytes:
        """Check the card cryptogram and return the EXTERNAL AUTHENTICATE command (GP 2.3.1 §E.5.2)."""
        keys, data = self._initialize_update_answer(response)
        # §E.5.1.6: KDD(10) key info(2: KVN, SCP id) seq counter(2) card challenge(6) card cryptogram(8)
        if len(data) != 28:
            raise SecureChannelError(f"INITIALIZE UPDATE response of {len(data)} bytes; SCP02 has 28")
        kdd, kvn, scp = data[:10], data[10], data[11]
        seq, card_challenge, card_cryptogram = data[12:14], data[14:20], data[20:28]
        if scp != 0x02:
            raise SecureChannelError(f"card answered for SCP{scp:02X}, expected SCP02")
        self._note_key_version(keys, kvn)
        self.kdd, self.key_version, self.sequence_counter, self.card_challenge = kdd, kvn, seq, card_challenge
        sk = scp02_session_keys(keys, seq)
        core = SCP02Core(sk.enc, sk.c_mac, sk.r_mac, sk.dek, i=self.i)
        expected = core.cryptogram(self.host_challenge + seq + card_challenge)
        if not hmac.compare_digest(expected, card_cryptogram):
            self._close("card cryptogram did not verify")
            raise AuthenticationError("card cryptogram does not verify: wrong keys or wrong card (do not retry)")
        if self.i & SCP02_I_PSEUDO_RANDOM and self.sd_aid is not None:
            if not hmac.compare_digest(scp02_card_challenge(sk.enc, self.sd_aid), card_challenge):
                self._close("pseudo-random card challenge did not verify")
                raise AuthenticationError("pseudo-random card challenge does not match")
            self.card_challenge_verified = True
        host_cryptogram = core.cryptogram(seq + card_challenge + self.host_challenge)
        head = bytes((0x84, 0x82, self.security_level, 0x00, 0x10)) + host_cryptogram
        mac = core.compute_cmac(head)  # first C-MAC of the session: ICV zero
        core.security_level = self.security_level
        self._core = core
        self._state = "authenticated"
        return head + mac

    def wrap(self, capdu: bytes) -> bytes:
        self._require_auth()
        core = self._core
        assert core is not None
        secured, plain = core.secure_command(CommandAPDU.from_bytes(capdu))
        if core.security_level & SL_R_MAC:
            self._pending.append(_Pending(b"", 0, plain))
        return secured

    def _verify(self, rapdu: bytes, pending: _Pending) -> bytes:
        assert self._core is not None
        return self._core.verify_response(rapdu, pending.plain)

    def max_data_length(self, extended: bool = False) -> int:
        core = SCP02Core(_ZERO16, _ZERO16, _ZERO16, _ZERO16, i=self.i, security_level=self.security_level)
        return core.max_data_length(extended)

    def encrypt_key(self, key: bytes) -> bytes:
        """PUT KEY key encryption: 3DES-ECB under the session DEK (GP 2.3.1 §E.4.7)."""
        self._require_auth()
        assert self._core is not None
        return scp02_encrypt_key(self._core.dek, key)

    def session_state(self) -> dict[str, str | int]:
        st: dict[str, str | int] = {
            "scp": 2,
            "state": self._state,
            "security_level": self.security_level,
            "i": self.i,
            "kvn": self.key_version,
            "host_challenge": self.host_challenge.hex().upper(),
            "card_challenge": self.card_challenge.hex().upper(),
            "kdd": self.kdd.hex().upper(),
            "sequence_counter": self.sequence_counter.hex().upper(),
            "sd_aid": self.sd_aid.hex().upper() if self.sd_aid is not None else "",
        }
        core = self._core
        if core is not None:
            st.update(
                s_enc=_hexkey(core.enc), s_cmac=_hexkey(core.c_mac), s_rmac=_hexkey(core.r_mac),
                s_dek=_hexkey(core.dek), icv=core.icv.hex().upper(), ricv=core.ricv.hex().upper(),
                pending=",".join(p.plain.hex().upper() for p in self._pending),
            )
        return st

    @classmethod
    def from_session_state(cls, keys: StaticKeys | dict[str, Any] | None = None,
                           state: dict[str, Any] | None = None) -> SCP02:
        """Rebuild a channel from :meth:`session_state` (``keys`` optional once authenticated)."""
        keys, state = _state_args(keys, state)
        try:
            if int(state["scp"]) != 2:
                raise SecureChannelError("session state is not an SCP02 state")
            ch = cls.__new__(cls)
            hc = bytes.fromhex(state["host_challenge"])
            _HostChannel.__init__(ch, keys, int(state["security_level"]), hc, os.urandom, 8)
            ch.i = int(state["i"])
            ch.key_version = int(state["kvn"])
            ch.card_challenge = bytes.fromhex(state["card_challenge"])
            ch.kdd = bytes.fromhex(state["kdd"])
            ch.sequence_counter = bytes.fromhex(state["sequence_counter"])
            ch.sd_aid = bytes.fromhex(state["sd_aid"]) if state["sd_aid"] else None
            ch.card_challenge_verified = None
            ch._core = None
            ch._state = str(state["state"])
            if ch._state not in ("new", "initialized", "authenticated", "closed"):
                raise SecureChannelError(f"unknown channel state {ch._state!r}")
            if ch._state == "authenticated":
                ch._core = SCP02Core(
                    bytes.fromhex(state["s_enc"]), bytes.fromhex(state["s_cmac"]),
                    bytes.fromhex(state["s_rmac"]), bytes.fromhex(state["s_dek"]), i=ch.i,
                    icv=bytes.fromhex(state["icv"]), ricv=bytes.fromhex(state["ricv"]),
                    security_level=ch.security_level,
                )
                for item in filter(None, str(state.get("pending", "")).split(",")):
                    ch._pending.append(_Pending(b"", 0, bytes.fromhex(item)))
            elif ch._state in ("new", "initialized") and keys is None:
                raise KeyMaterialError("an unauthenticated channel state needs the static keys")
            return ch
        except (KeyError, TypeError, ValueError) as exc:
            raise SecureChannelError(f"malformed SCP02 session state: {type(exc).__name__}") from None
