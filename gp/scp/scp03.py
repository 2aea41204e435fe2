"""SCP03 (GPC 2.3.1 Amendment D v1.2): AES-128/192/256, S8 and S16 modes, security levels
0x00/0x01/0x03/0x11/0x13/0x33. The session core serves the host (:class:`SCP03`) and the card
(:class:`gp.scp.card.CardSCP03`)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

from gp.apdu import SW, CommandAPDU
from gp.crypto import AESKey, pad_m2, scp03_kdf, unpad_m2
from gp.errors import (
    APDUError,
    AuthenticationError,
    EncodingError,
    KeyMaterialError,
    MACError,
    MalformedResponseError,
    RemoteProtocolError,
    SecureChannelError,
)
from gp.keys import StaticKeys, scp03_encrypt_key
from gp.scp.common import (
    _ZERO16,
    SCP03_LEVELS,
    ChannelState,
    SecurityLevel,
    _check_fits,
    _has_sm,
    _hexkey,
    _lc,
    _le,
    _plain_cla,
    _plain_command,
    _rmac_expected,
    _sm_cla,
)
from gp.scp.host import _HostChannel, _Pending, _state_args

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

    def __init__(
        self,
        s_enc: bytes,
        s_mac: bytes,
        s_rmac: bytes,
        *,
        s16: bool = False,
        mcv: bytes = _ZERO16,
        counter: int = 0,
        security_level: int = 0,
    ) -> None:
        self.s_enc = AESKey(s_enc)
        self.s_mac = AESKey(s_mac)
        self.s_rmac = AESKey(s_rmac)
        self.mac_len = 16 if s16 else 8
        self.mcv = mcv
        self.counter = counter
        self.security_level = SecurityLevel(security_level)

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
        room = limit - (self.mac_len if sl & SecurityLevel.C_MAC else 0)
        if sl & SecurityLevel.C_DEC:
            return room // 16 * 16 - 1  # ISO 9797-1 M2 always adds at least one byte
        return room

    # --- host ------------------------------------------------------------

    def secure_command(self, cmd: CommandAPDU) -> tuple[bytes, bytes, int]:
        """Host: wrap a plain command. Returns (secured APDU, MCV, counter) for the response."""
        sl = self.security_level
        data = cmd.data
        extended = cmd.is_extended
        if sl & SecurityLevel.C_MAC:
            # refuse before touching the counter or the MCV, so the channel stays usable
            enc_len = (len(data) // 16 + 1) * 16 if (sl & SecurityLevel.C_DEC and data) else len(data)
            _check_fits(enc_len + self.mac_len, extended, len(data), self.max_data_length(extended))
        if sl & SecurityLevel.C_DEC:
            # Amd D §6.2.6: the counter is incremented for every command once C-DEC is on,
            # also for commands without a data field (which are then not encrypted).
            self.counter += 1
            if data:
                data = self.encrypt_command_data(data, self.counter)
        if not sl & SecurityLevel.C_MAC:
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
        if not sl & SecurityLevel.R_MAC:
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
        if sl & SecurityLevel.R_ENC and body:
            if len(body) % 16:
                raise MACError("R-ENC response data is not a multiple of the AES block")
            try:
                body = self.decrypt_response_data(body, counter)
            except EncodingError as exc:
                raise MACError("R-ENC response data has bad padding") from exc
        return body + swb

    # --- card ------------------------------------------------------------

    def unsecure_command(self, raw: bytes) -> bytes:
        """Card: verify C-MAC and decrypt C-DEC; returns the plain command APDU bytes."""
        sl = self.security_level
        cmd = CommandAPDU.from_bytes(raw)
        if sl & SecurityLevel.C_DEC:
            self.counter += 1
        if not sl & SecurityLevel.C_MAC:
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
        if sl & SecurityLevel.C_DEC and body:
            if len(body) % 16:
                raise MACError("C-DEC data is not a multiple of the AES block")
            try:
                body = self.decrypt_command_data(body, self.counter)
            except EncodingError as exc:
                raise MACError("C-DEC data has bad padding") from exc
        plain = CommandAPDU(
            _plain_cla(cmd.cla),
            cmd.ins,
            cmd.p1,
            cmd.p2,
            body,
            cmd.le,
            extended=extended and len(body) <= 255 and (cmd.le or 0) <= 256,
        )
        return plain.to_bytes()

    def secure_response(self, rapdu: bytes) -> bytes:
        """Card: encrypt (R-ENC) and append the R-MAC to a plain response."""
        if len(rapdu) < 2:
            raise APDUError(f"response APDU too short: {len(rapdu)} bytes")
        sl = self.security_level
        if not sl & SecurityLevel.R_MAC:
            return rapdu
        swb = rapdu[-2:]
        sw = (swb[0] << 8) | swb[1]
        if not _rmac_expected(sw):
            return swb  # Amd D §6.2.5: no R-MAC, and no data, with error status words
        data = rapdu[:-2]
        if sl & SecurityLevel.R_ENC and data:
            data = self.encrypt_response_data(data, self.counter)
        return data + self.rmac(self.mcv, data, swb) + swb


class SCP03(_HostChannel):
    """Host side of SCP03 (GP Amd D v1.2)."""

    SCP = 3
    LEVELS = SCP03_LEVELS

    def __init__(
        self,
        keys: StaticKeys,
        security_level: int = 0x33,
        host_challenge: bytes | None = None,
        s16: bool = False,
        sd_aid: bytes | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.s16 = bool(s16)
        super().__init__(keys, security_level, host_challenge, random, 16 if s16 else 8)
        self.sd_aid = bytes(sd_aid) if sd_aid is not None else None
        self.i: int | None = None
        self.sequence_counter: bytes = b""
        self.card_challenge_verified: bool | None = None
        self._core: SCP03Core | None = None

    def __repr__(self) -> str:
        return (
            f"SCP03(state={self._state}, security_level=0x{self.security_level:02X}, "
            f"s16={self.s16}, kvn=0x{self.key_version:02X})"
        )

    def external_authenticate(self, response: bytes) -> bytes:
        """Check the card cryptogram and return the EXTERNAL AUTHENTICATE command (Amd D §7.1, §7.2)."""
        keys, data = self._initialize_update_answer(response)
        n = 16 if self.s16 else 8
        base = 10 + 3 + 2 * n
        if len(data) not in (base, base + 3):
            raise MalformedResponseError(
                f"INITIALIZE UPDATE response of {len(data)} bytes does not fit SCP03 "
                f"{'S16' if self.s16 else 'S8'} ({base} or {base + 3} expected)"
            )
        kdd, kvn, scp, i = data[:10], data[10], data[11], data[12]
        card_challenge = data[13 : 13 + n]
        card_cryptogram = data[13 + n : 13 + 2 * n]
        seq = data[13 + 2 * n :]
        if scp != 0x03:
            raise MalformedResponseError(f"card answered for SCP{scp:02X}, expected SCP03")
        self._note_key_version(keys, kvn)
        if bool(i & SCP03_I_PSEUDO_RANDOM) != bool(seq):
            raise MalformedResponseError("sequence counter presence does not match i (pseudo-random challenge bit)")
        if self.security_level & SecurityLevel.R_MAC and not i & SCP03_I_RMAC:
            raise RemoteProtocolError(f"card (i=0x{i:02X}) does not support R-MAC")
        if self.security_level & SecurityLevel.R_ENC and not i & SCP03_I_RENC:
            raise RemoteProtocolError(f"card (i=0x{i:02X}) does not support R-ENC")
        self.kdd, self.key_version, self.i = kdd, kvn, i
        self.card_challenge, self.sequence_counter = card_challenge, seq
        context = self.host_challenge + card_challenge
        s_enc, s_mac, s_rmac = scp03_session_keys(keys, context)
        core = SCP03Core(s_enc, s_mac, s_rmac, s16=self.s16)
        bits = n * 8
        expected = scp03_kdf(core.s_mac, DDC_CARD_CRYPTOGRAM, context, bits)
        if not hmac.compare_digest(expected, card_cryptogram):
            self._close("card cryptogram did not verify")
            raise AuthenticationError(
                "card cryptogram does not verify: wrong keys or wrong card (do not retry)", sw=SW.SUCCESS
            )
        if i & SCP03_I_PSEUDO_RANDOM and self.sd_aid is not None:
            if not hmac.compare_digest(scp03_card_challenge(keys.enc, seq, self.sd_aid, self.s16), card_challenge):
                self._close("pseudo-random card challenge did not verify")
                raise AuthenticationError(
                    "pseudo-random card challenge does not match the sequence counter", sw=SW.SUCCESS
                )
            self.card_challenge_verified = True
        host_cryptogram = scp03_kdf(core.s_mac, DDC_HOST_CRYPTOGRAM, context, bits)
        # Amd D §7.2: EXTERNAL AUTHENTICATE 84 82 SL 00 Lc host-cryptogram C-MAC, MCV = 0
        head = bytes((0x84, 0x82, self.security_level, 0x00, 2 * n)) + host_cryptogram
        core.mcv = core.s_mac.cmac(_ZERO16, head)
        ea = head + core.mcv[:n]
        core.security_level = self.security_level
        self._core = core
        self._state = ChannelState.OPEN
        return ea

    def wrap(self, capdu: bytes) -> bytes:
        """Plain C-APDU -> secured C-APDU at the active security level."""
        self._require_auth()
        core = self._session_core()
        secured, mcv, counter = core.secure_command(_plain_command(capdu))
        if core.security_level & SecurityLevel.R_MAC:
            self._pending.append(_Pending(mcv, counter))
        return secured

    def _session_core(self) -> SCP03Core:
        """The open channel's core. Callers check :meth:`_require_auth` first, which names why a
        channel is not open; this only narrows the type."""
        if self._core is None:
            raise SecureChannelError("the secure channel is not open")
        return self._core

    def _verify(self, rapdu: bytes, pending: _Pending) -> bytes:
        return self._session_core().verify_response(rapdu, pending.mcv, pending.counter)

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
            "state": str(self._state),
            "security_level": int(self.security_level),
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
                s_enc=_hexkey(core.s_enc),
                s_mac=_hexkey(core.s_mac),
                s_rmac=_hexkey(core.s_rmac),
                mcv=core.mcv.hex().upper(),
                counter=core.counter,
                pending=",".join(f"{p.mcv.hex().upper()}:{p.counter}" for p in self._pending),
            )
        return st

    @classmethod
    def from_session_state(
        cls, keys: StaticKeys | dict[str, Any] | None = None, state: dict[str, Any] | None = None
    ) -> SCP03:
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
            try:
                ch._state = ChannelState(str(state["state"]))
            except ValueError:
                raise SecureChannelError(f"unknown channel state {state['state']!r}") from None
            if ch._state is ChannelState.OPEN:
                core = SCP03Core(
                    bytes.fromhex(state["s_enc"]),
                    bytes.fromhex(state["s_mac"]),
                    bytes.fromhex(state["s_rmac"]),
                    s16=ch.s16,
                    mcv=bytes.fromhex(state["mcv"]),
                    counter=int(state["counter"]),
                    security_level=ch.security_level,
                )
                ch._core = core
                for item in filter(None, str(state.get("pending", "")).split(",")):
                    mcv_hex, counter = item.split(":")
                    ch._pending.append(_Pending(bytes.fromhex(mcv_hex), int(counter)))
            elif ch._state in (ChannelState.IDLE, ChannelState.INITIALIZED) and keys is None:
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
    core = SCP03Core(s_mac, s_mac, s_mac, s16=s16, mcv=bytes(mcv), security_level=SecurityLevel.C_MAC)
    cmd = CommandAPDU.from_bytes(apdu)
    n = len(cmd.data) + core.mac_len
    head = cmd.header() + _lc(n, cmd.is_extended) + cmd.data
    new_mcv = core.s_mac.cmac(core.mcv, head)
    return head + new_mcv[: core.mac_len] + _le(cmd.le, cmd.is_extended), new_mcv


def scp03_verify_rmac(s_rmac: bytes, mcv: bytes, response: bytes, s16: bool = False) -> bytes:
    """Verify the R-MAC of ``response`` (data || R-MAC || SW); returns data || SW or raises MACError."""
    core = SCP03Core(s_rmac, s_rmac, s_rmac, s16=s16, security_level=SecurityLevel.C_MAC | SecurityLevel.R_MAC)
    return core.verify_response(bytes(response), bytes(mcv), 0)
