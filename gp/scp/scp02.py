"""SCP02 (GPC 2.3.1 Annex E): 3DES, i=0x15/0x55 and the other explicit-initiation variants,
security levels 0x00/0x01/0x03/0x11/0x13. The session core serves the host (:class:`SCP02`) and the
card (:class:`gp.scp.card.CardSCP02`)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

from gp.apdu import SW, CommandAPDU
from gp.crypto import DES3Key, pad_m2, unpad_m2
from gp.errors import (
    APDUError,
    AuthenticationError,
    EncodingError,
    KeyMaterialError,
    MACError,
    MalformedResponseError,
    SecureChannelError,
)
from gp.keys import StaticKeys, scp02_encrypt_key
from gp.scp.common import (
    _ZERO8,
    _ZERO16,
    SCP02_LEVELS,
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

    def __init__(
        self,
        enc: bytes,
        c_mac: bytes,
        r_mac: bytes,
        dek: bytes,
        *,
        i: int,
        icv: bytes = _ZERO8,
        ricv: bytes = _ZERO8,
        security_level: int = 0,
    ) -> None:
        self.enc = DES3Key(enc)
        self.c_mac = DES3Key(c_mac)
        self.r_mac = DES3Key(r_mac)
        self.dek = DES3Key(dek)
        self.i = i
        self.icv = icv  # last C-MAC (zero before EXTERNAL AUTHENTICATE)
        self.ricv = ricv  # last R-MAC
        self.security_level = SecurityLevel(security_level)

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
        room = limit - (8 if sl & SecurityLevel.C_MAC else 0)
        if sl & SecurityLevel.C_DEC:
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
        if not sl & SecurityLevel.C_MAC:
            return cmd.to_bytes(), plain_for_rmac
        data = cmd.data
        enc_len = (len(data) // 8 + 1) * 8 if (sl & SecurityLevel.C_DEC and data) else len(data)
        n = enc_len + 8
        _check_fits(n, extended, len(data), self.max_data_length(extended))
        cla = _sm_cla(cmd.cla)
        if self.i & SCP02_I_UNMODIFIED_APDU:
            mac_input = cmd.header() + (_lc(len(data), extended) if data else b"") + data
        else:
            # §E.4.4: modified header: CLA with SM bit, Lc including the 8 C-MAC bytes
            mac_input = bytes((cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(len(data) + 8, extended) + data
        mac = self.compute_cmac(mac_input)
        if sl & SecurityLevel.C_DEC and data:
            # §E.4.6: 3DES-CBC, zero ICV, always padded
            data = self.enc.cbc_encrypt(pad_m2(data, 8))
        out = bytes((cla, cmd.ins, cmd.p1, cmd.p2)) + _lc(n, extended) + data + mac + _le(cmd.le, extended)
        return out, plain_for_rmac

    def verify_response(self, rapdu: bytes, plain_cmd: bytes) -> bytes:
        if len(rapdu) < 2:
            raise APDUError(f"response APDU too short: {len(rapdu)} bytes")
        if not self.security_level & SecurityLevel.R_MAC:
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
        if not sl & SecurityLevel.C_MAC:
            extended = cmd.is_extended
            return raw, cmd.header() + (_lc(len(cmd.data), extended) + cmd.data if cmd.data else b"")
        if not _has_sm(cmd.cla):
            raise SecureChannelError("command without secure messaging in a C-MAC session")
        if len(cmd.data) < 8:
            raise MACError("secured command too short for a C-MAC")
        body, mac = cmd.data[:-8], cmd.data[-8:]
        if sl & SecurityLevel.C_DEC and body:
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
        if not self.security_level & SecurityLevel.R_MAC:
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

    def __init__(
        self,
        keys: StaticKeys,
        security_level: int = 0x03,
        host_challenge: bytes | None = None,
        i: int = 0x55,
        sd_aid: bytes | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(keys.enc) != 16:
            raise KeyMaterialError("SCP02 needs 16-byte (2-key 3DES) keys")
        if not i & SCP02_I_EXPLICIT or i & SCP02_I_ICV_AID:
            raise SecureChannelError(f"SCP02 i=0x{i:02X} not supported (explicit initiation, zero ICV only)")
        if security_level & SecurityLevel.R_MAC and not i & SCP02_I_RMAC:
            # R-MAC is still computed as in §E.4.5; the card must agree (see gp.scp.card).
            pass
        super().__init__(keys, security_level, host_challenge, random, 8)
        self.i = i
        self.sd_aid = bytes(sd_aid) if sd_aid is not None else None
        self.sequence_counter = b""
        self.card_challenge_verified: bool | None = None
        self._core: SCP02Core | None = None

    def __repr__(self) -> str:
        return (
            f"SCP02(state={self._state}, security_level=0x{self.security_level:02X}, "
            f"i=0x{self.i:02X}, kvn=0x{self.key_version:02X})"
        )

    def external_authenticate(self, response: bytes) -> bytes:
        """Check the card cryptogram and return the EXTERNAL AUTHENTICATE command (GP 2.3.1 §E.5.2)."""
        keys, data = self._initialize_update_answer(response)
        # §E.5.1.6: KDD(10) key info(2: KVN, SCP id) seq counter(2) card challenge(6) card cryptogram(8)
        if len(data) != 28:
            raise MalformedResponseError(f"INITIALIZE UPDATE response of {len(data)} bytes; SCP02 has 28")
        kdd, kvn, scp = data[:10], data[10], data[11]
        seq, card_challenge, card_cryptogram = data[12:14], data[14:20], data[20:28]
        if scp != 0x02:
            raise MalformedResponseError(f"card answered for SCP{scp:02X}, expected SCP02")
        self._note_key_version(keys, kvn)
        self.kdd, self.key_version, self.sequence_counter, self.card_challenge = kdd, kvn, seq, card_challenge
        sk = scp02_session_keys(keys, seq)
        core = SCP02Core(sk.enc, sk.c_mac, sk.r_mac, sk.dek, i=self.i)
        expected = core.cryptogram(self.host_challenge + seq + card_challenge)
        if not hmac.compare_digest(expected, card_cryptogram):
            self._close("card cryptogram did not verify")
            raise AuthenticationError(
                "card cryptogram does not verify: wrong keys or wrong card (do not retry)", sw=SW.SUCCESS
            )
        if self.i & SCP02_I_PSEUDO_RANDOM and self.sd_aid is not None:
            if not hmac.compare_digest(scp02_card_challenge(sk.enc, self.sd_aid), card_challenge):
                self._close("pseudo-random card challenge did not verify")
                raise AuthenticationError("pseudo-random card challenge does not match", sw=SW.SUCCESS)
            self.card_challenge_verified = True
        host_cryptogram = core.cryptogram(seq + card_challenge + self.host_challenge)
        head = bytes((0x84, 0x82, self.security_level, 0x00, 0x10)) + host_cryptogram
        mac = core.compute_cmac(head)  # first C-MAC of the session: ICV zero
        core.security_level = self.security_level
        self._core = core
        self._state = ChannelState.OPEN
        return head + mac

    def wrap(self, capdu: bytes) -> bytes:
        self._require_auth()
        core = self._session_core()
        secured, plain = core.secure_command(_plain_command(capdu))
        if core.security_level & SecurityLevel.R_MAC:
            self._pending.append(_Pending(b"", 0, plain))
        return secured

    def _session_core(self) -> SCP02Core:
        """The open channel's core. Callers check :meth:`_require_auth` first, which names why a
        channel is not open; this only narrows the type."""
        if self._core is None:
            raise SecureChannelError("the secure channel is not open")
        return self._core

    def _verify(self, rapdu: bytes, pending: _Pending) -> bytes:
        return self._session_core().verify_response(rapdu, pending.plain)

    def max_data_length(self, extended: bool = False) -> int:
        core = SCP02Core(_ZERO16, _ZERO16, _ZERO16, _ZERO16, i=self.i, security_level=self.security_level)
        return core.max_data_length(extended)

    def encrypt_key(self, key: bytes) -> bytes:
        """PUT KEY key encryption: 3DES-ECB under the session DEK (GP 2.3.1 §E.4.7)."""
        self._require_auth()
        return scp02_encrypt_key(self._session_core().dek, key)

    def session_state(self) -> dict[str, str | int]:
        st: dict[str, str | int] = {
            "scp": 2,
            "state": str(self._state),
            "security_level": int(self.security_level),
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
                s_enc=_hexkey(core.enc),
                s_cmac=_hexkey(core.c_mac),
                s_rmac=_hexkey(core.r_mac),
                s_dek=_hexkey(core.dek),
                icv=core.icv.hex().upper(),
                ricv=core.ricv.hex().upper(),
                pending=",".join(p.plain.hex().upper() for p in self._pending),
            )
        return st

    @classmethod
    def from_session_state(
        cls, keys: StaticKeys | dict[str, Any] | None = None, state: dict[str, Any] | None = None
    ) -> SCP02:
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
            try:
                ch._state = ChannelState(str(state["state"]))
            except ValueError:
                raise SecureChannelError(f"unknown channel state {state['state']!r}") from None
            if ch._state is ChannelState.OPEN:
                ch._core = SCP02Core(
                    bytes.fromhex(state["s_enc"]),
                    bytes.fromhex(state["s_cmac"]),
                    bytes.fromhex(state["s_rmac"]),
                    bytes.fromhex(state["s_dek"]),
                    i=ch.i,
                    icv=bytes.fromhex(state["icv"]),
                    ricv=bytes.fromhex(state["ricv"]),
                    security_level=ch.security_level,
                )
                for item in filter(None, str(state.get("pending", "")).split(",")):
                    ch._pending.append(_Pending(b"", 0, bytes.fromhex(item)))
            elif ch._state in (ChannelState.IDLE, ChannelState.INITIALIZED) and keys is None:
                raise KeyMaterialError("an unauthenticated channel state needs the static keys")
            return ch
        except (KeyError, TypeError, ValueError) as exc:
            raise SecureChannelError(f"malformed SCP02 session state: {type(exc).__name__}") from None
