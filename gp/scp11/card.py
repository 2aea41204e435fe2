"""Card side of SCP11a/b/c (GPC Amendment F), sans-I/O, for the emulated card ``cardsim``.

It shares the handshake (:mod:`gp.scp11.handshake`) and the SCP03 secure messaging core
(:class:`gp.scp.SCP03Core`) with the host, and is as strict as :class:`gp.scp.card.CardSCP03`:
any handshake command ends the current session, a refused handshake leaves no session, a failed
C-MAC ends the session, and the caller counts every refused handshake (any answer other than
9000 to PERFORM SECURITY OPERATION, MUTUAL AUTHENTICATE or INTERNAL AUTHENTICATE) against the key
set's retry limit.

Status words: the error conditions of Amd F for PERFORM SECURITY OPERATION, MUTUAL AUTHENTICATE
and INTERNAL AUTHENTICATE, as Amd F v1.2.1 lists them (read through a public Java Card SCP11c
implementation that quotes them; the amendment's own text was not at hand, see docs/scp11.md).
Mapping an expired certificate and a wrong key usage to 6600 rather than 6A80 is our reading:
both are part of verifying the certificate. The two 66xx values are
``gp.apdu.SW.CERTIFICATE_VERIFICATION_FAILED`` and ``CERTIFICATE_NOT_WHITELISTED``:

``6E00`` CLA not 80/84 · ``6700`` malformed APDU ·
``6A88`` no trust anchor (PK.CA-KLOC.ECDSA) at P1/P2 of PSO, or no SD key (SK.SD.ECKA) of the
right kind at P1/P2 of the authenticate command ·
``6A80`` incorrect values in command data: a malformed certificate or authenticate data field,
an option not supported (key usage, key type, key length, HostID), a point not on the curve, a
variant that does not match the key, a chain that does not end with a key-agreement certificate ·
``6600`` verification of the certificate failed: signature (signed by another CA), validity
(expired or not yet effective), key usage ·
``6A81`` certificate with BF20 authorisation rules (not supported) ·
``6985`` MUTUAL AUTHENTICATE without a verified OCE certificate chain ·
after the handshake, as :func:`gp.scp.card.sw_for_error`: ``6982`` bad C-MAC or padding.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from gp.apdu import SW, CommandAPDU
from gp.errors import APDUError, EncodingError, GPError, SecureChannelError
from gp.keys import PutKeyData, decode_put_key, scp03_decrypt_key
from gp.scp import SCP03Core, SecurityLevel
from gp.scp11.certificates import (
    MAX_CHAIN_LENGTH,
    Certificate,
    KeyUsage,
    TrustAnchor,
    UnsupportedAuthorizationsError,
    parse_certificate,
    verify_chain,
)
from gp.scp11.constants import Ins, SCP11Variant, Tag
from gp.scp11.crypto import Curve, SessionKeys, private_key, random_private_key
from gp.scp11.errors import CertificateError
from gp.scp11.handshake import (
    AuthenticateRequest,
    AuthenticateResponse,
    agree,
    card_shared_secrets,
    sd_response_point,
)
from gp.tlv import encode_tlv

__all__ = ["SCP11C_FORBIDDEN_INS", "CardSCP11", "SDKey"]

SW_OK = b"\x90\x00"
_PSO_MORE_CERTIFICATES = 0x80
_INS_PUT_KEY = 0xD8
_INS_SET_STATUS = 0xF0
_INS_DELETE = 0xE4
# Amd F §3.1.3: an SCP11c session can be replayed, so PUT KEY, DELETE [key] and SET STATUS are refused in it.
SCP11C_FORBIDDEN_INS = frozenset({_INS_PUT_KEY, _INS_SET_STATUS})


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _has_secure_messaging(cla: int) -> bool:
    """GPC 2.3.1 §11.1.4: b3 of a first interindustry CLA, b6 of a further one."""
    return bool(cla & 0x20) if cla & 0x40 else bool(cla & 0x04)


@dataclass(frozen=True)
class SDKey:
    """An SD's ECKA key pair (SK.SD.ECKA / PK.SD.ECKA) under its reference: ``kid`` is the
    variant's key identifier (11 SCP11a, 13 SCP11b, 15 SCP11c), ``kvn`` its version.
    ``certificates`` is the SD's chain (CERT.SD.ECKA last) that GET DATA BF21 returns."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    kvn: int = 0x01
    kid: int = SCP11Variant.B.value
    certificates: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        Curve.of_key(self.private_key)
        SCP11Variant(self.kid)

    @classmethod
    def from_scalar(
        cls,
        curve: Curve,
        scalar: int,
        kvn: int = 0x01,
        kid: int = SCP11Variant.B.value,
        certificates: Sequence[bytes] = (),
    ) -> SDKey:
        return cls(private_key(curve, scalar), kvn, kid, tuple(certificates))

    @property
    def variant(self) -> SCP11Variant:
        return SCP11Variant(self.kid)

    @property
    def curve(self) -> Curve:
        return Curve.of_key(self.private_key)

    def certificate_store(self) -> bytes:
        """The SD's certificate store, tag BF21 with the certificates concatenated (Amd F §7.4.2)."""
        return encode_tlv(Tag.CERTIFICATE_STORE, b"".join(self.certificates))


class CardSCP11:
    """Card side of SCP11 for one security domain.

    ``keys``: the SD's ECKA keys. ``trust_anchors``: PK.CA-KLOC.ECDSA keys that OCE chains must
    start from, found by PERFORM SECURITY OPERATION's P1 (KVN) and P2 (KID). ``today`` gives the
    date certificates are checked against (the card's notion of time, never a clock read here).
    ``random`` draws the card's ephemeral key.
    """

    def __init__(
        self,
        keys: Sequence[SDKey],
        trust_anchors: Sequence[TrustAnchor] = (),
        *,
        today: Callable[[], dt.date],
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.keys = {(k.kvn, k.kid): k for k in keys}
        if len(self.keys) != len(keys):
            raise SecureChannelError("two SD keys with the same KVN and KID")
        self.trust_anchors = {(a.kvn, a.kid): a for a in trust_anchors}
        self._today = today
        self._random = random
        self._core: SCP03Core | None = None
        self._session_keys: SessionKeys | None = None
        self.variant: SCP11Variant | None = None
        self.security_level = SecurityLevel.NONE
        self._chain: list[Certificate] = []
        self._chain_reference: tuple[int, int] | None = None
        self._oce_point: bytes | None = None  # PK.OCE.ECKA of a verified chain, for one MUTUAL AUTHENTICATE

    def __repr__(self) -> str:
        variant = self.variant.label if self.variant else "-"
        return f"CardSCP11(session={variant}, security_level=0x{self.security_level:02X}, keys=<hidden>)"

    @property
    def is_authenticated(self) -> bool:
        return self._core is not None

    def reset(self, *, keep_chain: bool = False) -> None:
        """End the session (SELECT, card reset, refused handshake, secure messaging failure)."""
        self._core = None
        self._session_keys = None
        self.variant = None
        self.security_level = SecurityLevel.NONE
        if not keep_chain:
            self._chain = []
            self._chain_reference = None
            self._oce_point = None

    def handles(self, capdu: bytes) -> bool:
        """True for the handshake commands this class answers.

        INS 82 is shared with SCP03's EXTERNAL AUTHENTICATE (GPC 2.3.1 §11.10), whose P2 is 00;
        MUTUAL AUTHENTICATE names the SD key in P2 (KID 11 or 15, Amd F §7.6.1), so a card that
        speaks both routes INS 82 with P2 != 00 here.
        """
        if len(capdu) < 4:
            return False
        ins, p2 = capdu[1], capdu[3]
        if ins == Ins.MUTUAL_AUTHENTICATE:
            return p2 != 0x00
        return ins in (Ins.PERFORM_SECURITY_OPERATION, Ins.INTERNAL_AUTHENTICATE)

    def process(self, capdu: bytes) -> bytes:
        """Answer a handshake command (PERFORM SECURITY OPERATION, MUTUAL or INTERNAL AUTHENTICATE)."""
        ins = capdu[1] if len(capdu) >= 2 else -1
        if ins == Ins.PERFORM_SECURITY_OPERATION:
            return self.perform_security_operation(capdu)
        if ins == Ins.MUTUAL_AUTHENTICATE:
            return self.mutual_authenticate(capdu)
        if ins == Ins.INTERNAL_AUTHENTICATE:
            return self.internal_authenticate(capdu)
        return _sw(SW.INS_NOT_SUPPORTED)

    @staticmethod
    def _parse(capdu: bytes) -> tuple[CommandAPDU | None, bytes]:
        try:
            cmd = CommandAPDU.from_bytes(capdu)
        except APDUError:
            return None, _sw(SW.WRONG_LENGTH)
        if cmd.cla not in (0x80, 0x84):
            return None, _sw(SW.CLA_NOT_SUPPORTED)
        return cmd, b""

    # --- PERFORM SECURITY OPERATION (Amd F §7.5) -----------------------------

    def perform_security_operation(self, capdu: bytes) -> bytes:
        """One certificate of the OCE chain. P1 = KVN and P2 b7..b1 = KID of the trust anchor,
        P2 b8 set while more certificates follow. The chain is checked as it arrives; the last
        certificate must be CERT.OCE.ECKA (key agreement)."""
        self.reset(keep_chain=True)  # a PSO ends any session
        cmd, err = self._parse(capdu)
        if cmd is None:
            self.reset()
            return err
        reference = (cmd.p1, cmd.p2 & 0x7F)
        more = bool(cmd.p2 & _PSO_MORE_CERTIFICATES)
        if self._oce_point is not None or not self._chain:
            self._chain, self._chain_reference, self._oce_point = [], reference, None
        if reference != self._chain_reference:
            self.reset()
            return _sw(SW.WRONG_DATA)
        anchor = self.trust_anchors.get(reference)
        if anchor is None:
            self.reset()
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if len(self._chain) >= MAX_CHAIN_LENGTH:
            self.reset()
            return _sw(SW.WRONG_DATA)
        try:
            self._chain.append(parse_certificate(cmd.data))
            wanted = KeyUsage.SIGNATURE_VERIFICATION if more else KeyUsage.KEY_AGREEMENT
            leaf = verify_chain(self._chain, anchor, self._today(), wanted)
        except UnsupportedAuthorizationsError:
            self.reset()
            return _sw(SW.FUNCTION_NOT_SUPPORTED)
        except CertificateError:
            self.reset()
            return _sw(SW.CERTIFICATE_VERIFICATION_FAILED)
        except (EncodingError, IndexError):
            self.reset()
            return _sw(SW.WRONG_DATA)
        if not more:
            self._oce_point = leaf.public_key_point
        return SW_OK

    # --- MUTUAL / INTERNAL AUTHENTICATE (Amd F §7.6, §7.7) -------------------

    def mutual_authenticate(self, capdu: bytes) -> bytes:
        """SCP11a / SCP11c: needs a verified OCE chain first (PSO)."""
        return self._authenticate(capdu, mutual=True)

    def internal_authenticate(self, capdu: bytes) -> bytes:
        """SCP11b: no OCE certificate."""
        return self._authenticate(capdu, mutual=False)

    def _authenticate(self, capdu: bytes, *, mutual: bool) -> bytes:
        oce_point = self._oce_point
        self.reset()  # every authenticate ends the session and consumes a verified chain
        cmd, err = self._parse(capdu)
        if cmd is None:
            return err
        key = self.keys.get((cmd.p1, cmd.p2))
        if key is None or key.variant.authenticates_oce != mutual:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        try:
            request = AuthenticateRequest.parse(cmd.data)
        except EncodingError:
            return _sw(SW.WRONG_DATA)
        if request.variant is not key.variant:
            return _sw(SW.WRONG_DATA)
        if mutual and oce_point is None:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        curve = key.curve
        ephemeral = None if key.variant is SCP11Variant.C else random_private_key(curve, self._random)
        try:
            secrets = card_shared_secrets(
                key.variant, key.private_key, ephemeral, request.ephemeral_point, oce_point if mutual else None
            )
        except EncodingError:  # a point not on the curve (ePK.OCE, or PK.OCE on another curve)
            return _sw(SW.WRONG_DATA)
        point = sd_response_point(key.variant, key.private_key, ephemeral)
        agreement = agree(curve, request, point, secrets)
        keys = agreement.keys
        self._session_keys = keys
        # Amd F §6.6: SCP03 secure messaging from here, MAC chaining value = receipt, counter from 1.
        level = request.key_usage.security_level
        self._core = SCP03Core(
            keys.s_enc, keys.s_mac, keys.s_rmac, mcv=agreement.receipt, counter=0, security_level=level
        )
        if key.variant.authenticates_oce:
            level |= SecurityLevel.AUTHENTICATED
        self.security_level = level
        self.variant = key.variant
        return AuthenticateResponse(point, agreement.receipt).encode() + SW_OK

    # --- secure messaging ------------------------------------------------------

    def unwrap_command(self, capdu: bytes) -> bytes:
        """Secured C-APDU -> plain C-APDU. Raises like :meth:`gp.scp.card.CardSCP03.unwrap_command`
        (answer with :func:`gp.scp.card.sw_for_error`); any failure ends the session."""
        capdu = bytes(capdu)
        core = self._core
        if core is None:
            cmd = CommandAPDU.from_bytes(capdu)
            if _has_secure_messaging(cmd.cla):
                self.reset()
                raise SecureChannelError("secure messaging indicated but no SCP11 session is open")
            return capdu
        try:
            return core.unsecure_command(capdu)
        except GPError:
            self.reset()  # GPC 2.3.1 §10.2.3: a secure messaging failure ends the session
            raise

    def wrap_response(self, rapdu: bytes) -> bytes:
        """Plain R-APDU -> secured R-APDU (R-ENC and R-MAC per the key usage)."""
        core = self._core
        if core is None:
            return bytes(rapdu)
        return core.secure_response(bytes(rapdu))

    def allows(self, plain_capdu: bytes) -> bool:
        """False for a command the session may not carry: PUT KEY, SET STATUS and DELETE of a key
        (tags D0/D2) in SCP11c (Amd F §3.1.3). The caller answers ``6985``."""
        if self.variant is not SCP11Variant.C or len(plain_capdu) < 2:
            return True
        ins = plain_capdu[1]
        if ins in SCP11C_FORBIDDEN_INS:
            return False
        if ins == _INS_DELETE:
            data = CommandAPDU.from_bytes(plain_capdu).data
            return data[:1] not in (b"\xd0", b"\xd2")
        return True

    @property
    def session_dek(self) -> bytes:
        """S-DEK of the session, for PUT KEY data (Amd F Table 6-18)."""
        if self._session_keys is None:
            raise SecureChannelError("no SCP11 session")
        return self._session_keys.s_dek

    def decode_put_key(self, data: bytes) -> PutKeyData:
        """PUT KEY data with AES keys under S-DEK (AES-CBC, zero ICV as Amd D §7.2), KCVs checked."""
        dek = self.session_dek
        return decode_put_key(data, lambda enc, n: scp03_decrypt_key(dek, enc, n))
