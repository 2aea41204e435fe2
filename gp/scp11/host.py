"""Host (off-card entity) side of SCP11a, SCP11b and SCP11c (GPC Amendment F), sans-I/O.

The channel builds the handshake commands, checks the card's answer and its receipt, then wraps
commands and unwraps responses with SCP03 secure messaging (Amd F §6.6 reuses Amd D §6.2.4-6.2.7)
through :class:`gp.scp.SCP03Core`, with the receipt as first MAC chaining value and the
encryption counter starting at 1. MACs are 8 bytes (S8).

* SCP11b: ``internal_authenticate()`` then ``complete(response)``. Only the card is
  authenticated (by its static key PK.SD.ECKA, which the caller took from a certificate it
  checked).
* SCP11a / SCP11c: ``perform_security_operation()`` (one PSO per certificate of the OCE chain),
  ``mutual_authenticate()``, then ``complete(response)``. Both ends are authenticated.

Pipelining works as with :class:`gp.scp.SCP03`: each ``wrap`` remembers the MAC chaining value
and counter its response needs.
"""

from __future__ import annotations

import hmac
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric import ec

from gp.apdu import CommandAPDU
from gp.errors import (
    EncodingError,
    GPError,
    MalformedResponseError,
    RemoteProtocolError,
    SecureChannelError,
    StatusWordError,
)
from gp.keys import scp03_encrypt_key
from gp.scp import SCP03Core, SecuredResponse, SecurityLevel
from gp.scp11.certificates import Certificate
from gp.scp11.constants import Ins, KeyUsageQualifier, SCP11Variant
from gp.scp11.crypto import Curve, SessionKeys, encode_point, private_key, public_key, random_private_key
from gp.scp11.errors import ReceiptError, SCP11StateError
from gp.scp11.handshake import (
    SESSION_KEY_LENGTHS,
    AuthenticateRequest,
    AuthenticateResponse,
    agree,
    host_shared_secrets,
)

__all__ = ["SCP11", "SCP11a", "SCP11b", "SCP11c"]

_CLA_GP = 0x80
_PSO_MORE_CERTIFICATES = 0x80  # P2 b8: more certificates of the chain follow (as yubikit sends it)


def _rmac_expected(sw: int) -> bool:
    """Amd D §6.2.5 (used by Amd F §6.6): R-MAC only on 9000 and on warnings 62xx/63xx."""
    return sw == 0x9000 or (sw >> 8) in (0x62, 0x63)


class SCP11:
    """Shared host behaviour of the three variants; use :class:`SCP11a`, :class:`SCP11b` or
    :class:`SCP11c`.

    ``sd_public_key``: PK.SD.ECKA as an uncompressed point (from the SD's checked certificate);
    its length picks P-256 or P-384. ``kvn``/``kid``: P1/P2 of the authenticate command (the SD
    key's reference; ``kid`` defaults to the variant's). ``key_usage``: 3C (C-MAC, C-DEC, R-MAC,
    R-ENC: security level 33), 34 (C-MAC, R-MAC) or 1C (C-MAC, C-DEC). ``key_length``: AES
    session key bytes, 16 on P-256 and 32 on P-384 by default. ``ephemeral_private_key`` pins
    eSK.OCE.ECKA (tests); ``None`` draws it from ``random``.
    """

    VARIANT: ClassVar[SCP11Variant]

    def __init__(
        self,
        sd_public_key: bytes,
        kvn: int = 0x01,
        kid: int | None = None,
        key_usage: int = 0x3C,
        ephemeral_private_key: int | None = None,
        *,
        key_length: int | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        sd_public_key = bytes(sd_public_key)
        self.curve = Curve.of_point(sd_public_key)
        public_key(self.curve, sd_public_key)  # InvalidPointError unless on the curve
        self.sd_public_key = sd_public_key
        for name, value in (("kvn", kvn), ("kid", kid if kid is not None else 0)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise SCP11StateError(f"{name} must be a byte, got {value!r}")
        self.kvn = kvn
        self.kid = self.VARIANT.value if kid is None else kid
        try:
            self.key_usage = KeyUsageQualifier(key_usage)
        except ValueError:
            raise SCP11StateError(f"key usage {key_usage!r} not supported (3C, 34 or 1C)") from None
        if key_length is None:
            key_length = 16 if self.curve is Curve.P256 else 32
        if key_length not in SESSION_KEY_LENGTHS:
            raise SCP11StateError(f"session key length {key_length} not supported (16, 24, 32)")
        self.key_length = key_length
        if ephemeral_private_key is None:
            self._ephemeral = random_private_key(self.curve, random)
        else:
            self._ephemeral = private_key(self.curve, ephemeral_private_key)
        self.security_level = self.key_usage.security_level
        if self.VARIANT.authenticates_oce:
            self.security_level |= SecurityLevel.AUTHENTICATED
        self._request: AuthenticateRequest | None = None
        self._core: SCP03Core | None = None
        self._keys: SessionKeys | None = None
        self._pending: deque[tuple[bytes, int]] = deque()
        self._state = "new"  # new -> sent (authenticate built) -> authenticated | closed
        self._closed_reason = ""
        self.receipt = b""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(state={self._state}, curve={self.curve.name}, kvn=0x{self.kvn:02X}, "
            f"kid=0x{self.kid:02X}, security_level=0x{self.security_level:02X})"
        )

    # --- handshake -------------------------------------------------------

    @property
    def is_authenticated(self) -> bool:
        return self._state == "authenticated"

    @property
    def ephemeral_public_key(self) -> bytes:
        """ePK.OCE.ECKA as sent in 5F49."""
        return encode_point(self._ephemeral.public_key())

    @property
    def session_keys(self) -> SessionKeys:
        """The derived keys (known-answer tests, key custody); only once authenticated."""
        self._open_core()
        if self._keys is None:
            raise SCP11StateError("no session keys")
        return self._keys

    def _oce_static(self) -> ec.EllipticCurvePrivateKey | None:
        return None

    def _authenticate_command(self, ins: Ins) -> bytes:
        if self._state != "new":
            raise SCP11StateError("the authenticate command was already built; use a new channel object")
        request = AuthenticateRequest(self.VARIANT, self.key_usage, self.key_length, self.ephemeral_public_key)
        self._request = request
        self._state = "sent"
        # Amd F §7.6.2 / §7.7.2: CLA 80, P1 = KVN, P2 = KID of SK.SD.ECKA; Lc data (no Le, as the
        # known-answer exchange shows; a card answers case-3 commands with data under T=1).
        return CommandAPDU(_CLA_GP, ins, self.kvn, self.kid, request.encode()).to_bytes()

    def complete(self, response: bytes) -> None:
        """Check the card's answer (data || SW) to the authenticate command: derive the session
        keys and verify the receipt. :class:`ReceiptError` on a bad receipt, a
        :class:`~gp.errors.StatusWordError` on a refusal, a :class:`~gp.errors.MalformedResponseError`
        on a malformed answer or a point off the curve (the parser's :class:`~gp.errors.EncodingError`
        / :class:`InvalidPointError` as ``__cause__``); every failure closes the channel."""
        if self._state != "sent" or self._request is None:
            raise SCP11StateError("complete() needs the authenticate command first")
        response = bytes(response)
        try:
            if len(response) < 2:
                raise MalformedResponseError(f"{self.VARIANT.label} authenticate answer shorter than a status word")
            sw = int.from_bytes(response[-2:], "big")
            if sw != 0x9000:
                raise StatusWordError(sw, f"{self.VARIANT.label} authentication refused with SW {sw:04X}")
            try:
                answer = AuthenticateResponse.parse(response[:-2])
                if self.VARIANT is SCP11Variant.C and answer.sd_point != self.sd_public_key:
                    raise ReceiptError("SCP11c card answered a key that is not PK.SD.ECKA")
                public_key(self.curve, answer.sd_point)  # ePK.SD.ECKA (SCP11a/b) must be on the curve
            except EncodingError as exc:  # the card's bytes: remote (gp.errors, the receiver decides)
                raise MalformedResponseError.wrap(exc, f"{self.VARIANT.label} authenticate answer", sw=sw) from exc
            secrets = host_shared_secrets(
                self.VARIANT, self.curve, self._ephemeral, self._oce_static(), self.sd_public_key, answer.sd_point
            )
            agreement = agree(self.curve, self._request, answer.sd_point, secrets)
            if not hmac.compare_digest(agreement.receipt, answer.receipt):
                raise ReceiptError("receipt does not verify: altered exchange or wrong card (do not retry)")
        except GPError as exc:
            self._close(str(exc))
            raise
        self._keys = agreement.keys
        self.receipt = answer.receipt
        # Amd F §6.6: SCP03 secure messaging, MAC chaining value = receipt, counter from 1.
        self._core = SCP03Core(
            agreement.keys.s_enc,
            agreement.keys.s_mac,
            agreement.keys.s_rmac,
            mcv=answer.receipt,
            counter=0,
            security_level=self.security_level & 0x33,
        )
        self._state = "authenticated"

    # --- secure messaging ----------------------------------------------------

    def _open_core(self) -> SCP03Core:
        if self._state != "authenticated" or self._core is None:
            detail = f" ({self._closed_reason})" if self._closed_reason else ""
            raise SCP11StateError(f"secure channel is not open{detail}")
        return self._core

    def _close(self, reason: str) -> None:
        self._state = "closed"
        self._closed_reason = reason
        self._pending.clear()
        self._core = None

    def wrap(self, capdu: bytes) -> bytes:
        """Plain C-APDU -> secured C-APDU (C-MAC, and C-DEC where the key usage has it)."""
        core = self._open_core()
        secured, mcv, counter = core.secure_command(CommandAPDU.from_bytes(capdu))
        if core.security_level & SecurityLevel.R_MAC:
            self._pending.append((mcv, counter))
        return secured

    def unwrap(self, rapdu: bytes) -> bytes:
        """Secured R-APDU -> plain data || SW; :class:`~gp.errors.MACError` on a bad R-MAC (and the
        channel closes). An error status word comes back unauthenticated: see :meth:`unwrap_response`."""
        return self.unwrap_response(rapdu).to_bytes()

    def unwrap_response(self, rapdu: bytes) -> SecuredResponse:
        """Like :meth:`unwrap`, saying whether the R-MAC covered data and status word."""
        core = self._open_core()
        rapdu = bytes(rapdu)
        if len(rapdu) < 2:
            raise MalformedResponseError(f"response APDU too short: {len(rapdu)} bytes")
        sw = int.from_bytes(rapdu[-2:], "big")
        if not core.security_level & SecurityLevel.R_MAC:
            return SecuredResponse(rapdu[:-2], sw, authenticated=False)
        if not self._pending:
            raise SCP11StateError("response without a wrapped command to match it")
        mcv, counter = self._pending.popleft()
        try:
            plain = core.verify_response(rapdu, mcv, counter)
        except (RemoteProtocolError, SecureChannelError) as exc:  # MACError, and a core used out of state
            self._close(str(exc))
            raise
        except EncodingError as exc:  # the card's bytes: remote, as in gp.scp.host
            self._close(str(exc))
            raise MalformedResponseError.wrap(exc, "secured response", sw=sw) from exc
        return SecuredResponse(plain[:-2], sw, authenticated=_rmac_expected(sw))

    def encrypt_key(self, key: bytes) -> bytes:
        """PUT KEY key data: AES-CBC, zero ICV, under the session S-DEK (Amd F §6.5.2 Table 6-18
        derives S-DEK for this; the encoding is Amd D §7.2's)."""
        return scp03_encrypt_key(self.session_keys.s_dek, key)

    def max_data_length(self, extended: bool = False) -> int:
        zero = bytes(16)
        return SCP03Core(zero, zero, zero, security_level=self.security_level & 0x33).max_data_length(extended)

    # --- persistence (a channel continued in another process, DESIGN §7b) -----

    def session_state(self) -> dict[str, str | int]:
        """Everything needed to continue this channel elsewhere. Contains secrets (the ephemeral
        private key before :meth:`complete`, the session keys after it): seal it. SK.OCE.ECKA is
        never in it; SCP11a/c pass it again to :meth:`from_session_state` before completion."""
        if self._state == "closed":
            raise SCP11StateError(f"a closed channel has no state to keep ({self._closed_reason})")
        state: dict[str, str | int] = {
            "scp": 0x11,
            "variant": self.VARIANT.value,
            "state": self._state,
            "sd_public_key": self.sd_public_key.hex().upper(),
            "kvn": self.kvn,
            "kid": self.kid,
            "key_usage": self.key_usage.value,
            "key_length": self.key_length,
        }
        if isinstance(self, _Authenticated):
            state.update(oce_kvn=self.oce_kvn, oce_kid=self.oce_kid)
        if self._state != "authenticated":
            state["ephemeral_private_key"] = f"{self._ephemeral.private_numbers().private_value:X}"
            return state
        core, keys = self._core, self._keys
        if core is None or keys is None:
            raise SCP11StateError("authenticated channel without session keys")
        state.update(
            receipt=self.receipt.hex().upper(),
            receipt_key=keys.receipt_key.hex().upper(),
            s_enc=keys.s_enc.hex().upper(),
            s_mac=keys.s_mac.hex().upper(),
            s_rmac=keys.s_rmac.hex().upper(),
            s_dek=keys.s_dek.hex().upper(),
            mcv=core.mcv.hex().upper(),
            counter=core.counter,
            pending=",".join(f"{mcv.hex().upper()}:{counter}" for mcv, counter in self._pending),
        )
        return state

    @classmethod
    def _restore(
        cls,
        state: dict[str, object],
        oce_private_key: int | ec.EllipticCurvePrivateKey | None,
        certificates: Sequence[bytes | Certificate],
    ) -> SCP11:
        if int(str(state["scp"])) != 0x11 or int(str(state["variant"])) != cls.VARIANT.value:
            raise SCP11StateError(f"session state is not a {cls.VARIANT.label} state")
        phase = str(state["state"])
        if phase not in ("new", "sent", "authenticated"):
            raise SCP11StateError(f"unknown channel state {phase!r}")
        scalar = int(str(state["ephemeral_private_key"]), 16) if phase != "authenticated" else None
        channel = cls.__new__(cls)
        SCP11.__init__(
            channel,
            bytes.fromhex(str(state["sd_public_key"])),
            int(str(state["kvn"])),
            int(str(state["kid"])),
            int(str(state["key_usage"])),
            scalar,
            key_length=int(str(state["key_length"])),
        )
        if isinstance(channel, _Authenticated):
            if phase != "authenticated" and oce_private_key is None:
                raise SCP11StateError(f"{cls.VARIANT.label} needs SK.OCE.ECKA to continue before completion")
            channel._set_oce(oce_private_key, certificates)
            channel.oce_kvn, channel.oce_kid = int(str(state["oce_kvn"])), int(str(state["oce_kid"]))
        if phase == "sent":
            channel._request = AuthenticateRequest(
                channel.VARIANT, channel.key_usage, channel.key_length, channel.ephemeral_public_key
            )
        elif phase == "authenticated":
            keys = SessionKeys(
                *(bytes.fromhex(str(state[k])) for k in ("receipt_key", "s_enc", "s_mac", "s_rmac", "s_dek"))
            )
            channel._keys = keys
            channel.receipt = bytes.fromhex(str(state["receipt"]))
            channel._core = SCP03Core(
                keys.s_enc,
                keys.s_mac,
                keys.s_rmac,
                mcv=bytes.fromhex(str(state["mcv"])),
                counter=int(str(state["counter"])),
                security_level=channel.security_level & 0x33,
            )
            for item in filter(None, str(state.get("pending", "")).split(",")):
                mcv_hex, counter = item.split(":")
                channel._pending.append((bytes.fromhex(mcv_hex), int(counter)))
        channel._state = phase
        return channel

    @classmethod
    def from_session_state(
        cls,
        state: dict[str, object],
        *,
        oce_private_key: int | ec.EllipticCurvePrivateKey | None = None,
        certificates: Sequence[bytes | Certificate] = (),
    ) -> SCP11:
        """Rebuild a channel from :meth:`session_state` (call it on the variant's class)."""
        try:
            return cls._restore(state, oce_private_key, certificates)
        except (KeyError, TypeError, ValueError) as exc:
            raise SCP11StateError(f"malformed {cls.VARIANT.label} session state: {type(exc).__name__}") from None


class SCP11b(SCP11):
    """SCP11b: the card authenticates to the host; the host stays anonymous (Amd F §3.1.1)."""

    VARIANT = SCP11Variant.B

    def internal_authenticate(self) -> bytes:
        """The INTERNAL AUTHENTICATE command (Amd F §7.7): 80 88 KVN KID Lc A6{..} 5F49{ePK.OCE}."""
        return self._authenticate_command(Ins.INTERNAL_AUTHENTICATE)


class _Authenticated(SCP11):
    """SCP11a/c: the OCE proves SK.OCE.ECKA, certified by ``certificates`` (CA side first, leaf
    CERT.OCE.ECKA last), checked by the card against the trust anchor at ``oce_kvn``/``oce_kid``
    (P1/P2 of PERFORM SECURITY OPERATION)."""

    def __init__(
        self,
        sd_public_key: bytes,
        kvn: int = 0x01,
        kid: int | None = None,
        key_usage: int = 0x3C,
        ephemeral_private_key: int | None = None,
        *,
        oce_private_key: int | ec.EllipticCurvePrivateKey,
        certificates: Sequence[bytes | Certificate],
        oce_kvn: int = 0x00,
        oce_kid: int = 0x00,
        key_length: int | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(
            sd_public_key, kvn, kid, key_usage, ephemeral_private_key, key_length=key_length, random=random
        )
        if not certificates:
            raise SCP11StateError(f"{self.VARIANT.label} needs the OCE certificate chain")
        self._set_oce(oce_private_key, certificates)
        if not 0 <= oce_kvn <= 0xFF or not 0 <= oce_kid <= 0x7F:
            raise SCP11StateError(f"trust anchor reference out of range: KVN {oce_kvn!r}, KID {oce_kid!r}")
        self.oce_kvn, self.oce_kid = oce_kvn, oce_kid

    def _set_oce(
        self, oce_private_key: int | ec.EllipticCurvePrivateKey | None, certificates: Sequence[bytes | Certificate]
    ) -> None:
        self._oce: ec.EllipticCurvePrivateKey | None
        if oce_private_key is None:
            self._oce = None  # a restored, authenticated channel no longer needs it
        elif isinstance(oce_private_key, ec.EllipticCurvePrivateKey):
            if Curve.of_key(oce_private_key) is not self.curve:
                raise SCP11StateError("SK.OCE.ECKA is not on the SD key's curve")
            self._oce = oce_private_key
        else:
            self._oce = private_key(self.curve, oce_private_key)
        self.certificates = [c if isinstance(c, bytes) else c.encode() for c in certificates]

    def _oce_static(self) -> ec.EllipticCurvePrivateKey | None:
        return self._oce

    def perform_security_operation(self) -> list[bytes]:
        """PERFORM SECURITY OPERATION commands, one per certificate (Amd F §7.5): 80 2A P1=KVN
        P2=KID of the trust anchor, b8 of P2 set while more certificates follow. Each answer
        must be 9000 before the next is sent; long certificates use extended length."""
        if self._state != "new":
            raise SCP11StateError("the certificate chain goes before MUTUAL AUTHENTICATE")
        last = len(self.certificates) - 1
        return [
            CommandAPDU(
                _CLA_GP,
                Ins.PERFORM_SECURITY_OPERATION,
                self.oce_kvn,
                self.oce_kid | (_PSO_MORE_CERTIFICATES if i < last else 0),
                cert,
            ).to_bytes()
            for i, cert in enumerate(self.certificates)
        ]

    def mutual_authenticate(self) -> bytes:
        """The MUTUAL AUTHENTICATE command (Amd F §7.6): 80 82 KVN KID Lc A6{..} 5F49{ePK.OCE}."""
        return self._authenticate_command(Ins.MUTUAL_AUTHENTICATE)


class SCP11a(_Authenticated):
    """SCP11a: mutual authentication with ephemeral keys on both sides (Amd F §3.1.2)."""

    VARIANT = SCP11Variant.A


class SCP11c(_Authenticated):
    """SCP11c: like SCP11a without a card ephemeral key, so a script can be computed offline for
    a card whose PK.SD.ECKA is known (Amd F §3.1.3). Replayable by design: the card refuses PUT
    KEY, DELETE [key] and SET STATUS in it (Amd F §3.1.3, see :mod:`gp.scp11.card`)."""

    VARIANT = SCP11Variant.C
