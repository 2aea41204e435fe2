"""Wire constants of SCP11 (GPC 2.3.1 Amendment F v1.3/v1.4), as enums.

Where a value comes from another GlobalPlatform document the comment names it.
"""

from __future__ import annotations

from enum import IntEnum

from gp.errors import EncodingError
from gp.scp.common import SecurityLevel

__all__ = [
    "SCP11_ID",
    "Ins",
    "KeyType",
    "KeyUsageQualifier",
    "SCP11Variant",
    "Tag",
]

# Amd F §7.1.1 (SCP identifier and parameters, tag 90): first byte is the SCP number.
SCP11_ID = 0x11


class SCP11Variant(IntEnum):
    """The three SCP11 variants, valued by the KID of SK.SD.ECKA they use (Amd F §7.1.1, key
    identifiers of the SD's ECKA key; yubikit's ScpKid uses the same numbers)."""

    A = 0x11
    B = 0x13
    C = 0x15

    @property
    def parameter(self) -> int:
        """Second byte of tag 90 (Amd F §7.1.1, "i" parameter bits b2..b1): 01 = SCP11a,
        00 = SCP11b, 03 = SCP11c."""
        return {SCP11Variant.A: 0x01, SCP11Variant.B: 0x00, SCP11Variant.C: 0x03}[self]

    @classmethod
    def from_parameter(cls, parameter: int) -> SCP11Variant:
        for variant in cls:
            if variant.parameter == parameter & 0x03:
                return variant
        raise EncodingError(f"no SCP11 variant for parameter {parameter:02X}")

    @property
    def authenticates_oce(self) -> bool:
        """SCP11a and SCP11c authenticate the off-card entity with a certificate (Amd F §3.1)."""
        return self is not SCP11Variant.B

    @property
    def label(self) -> str:
        return f"SCP11{self.name.lower()}"


# Amd F §7.1.1: "i" bit b3 asks for HostID / card identifiers in the key derivation.
PARAMETER_HOST_ID = 0x04


class Ins(IntEnum):
    """Instruction bytes (Amd F §7.5-§7.7; MUTUAL AUTHENTICATE shares 82 with EXTERNAL AUTHENTICATE)."""

    PERFORM_SECURITY_OPERATION = 0x2A
    MUTUAL_AUTHENTICATE = 0x82
    INTERNAL_AUTHENTICATE = 0x88


class Tag(IntEnum):
    """BER-TLV tags of the handshake (Amd F §7.6 Tables 7-13..7-15) and of the GP certificate
    (Amd F §6.2 Table 6-1 in v1.4; GPC 2.3.1 Table 11-17/B-2 for key usage and key parameters)."""

    CONTROL_REFERENCE_TEMPLATE = 0xA6  # key agreement CRT
    SCP_IDENTIFIER = 0x90
    KEY_USAGE = 0x95
    KEY_TYPE = 0x80
    KEY_LENGTH = 0x81
    HOST_ID = 0x84
    EPHEMERAL_PUBLIC_KEY = 0x5F49  # ePK.OCE.ECKA / ePK.SD.ECKA (PK.SD.ECKA for SCP11c)
    RECEIPT = 0x86
    CERTIFICATE = 0x7F21
    CERTIFICATE_STORE = 0xBF21
    SERIAL_NUMBER = 0x93
    CA_KLOC_IDENTIFIER = 0x42
    SUBJECT_IDENTIFIER = 0x5F20
    EFFECTIVE_DATE = 0x5F25
    EXPIRATION_DATE = 0x5F24
    DISCRETIONARY_DATA = 0x53
    DISCRETIONARY_DATA_TLV = 0x73
    AUTHORIZATIONS = 0xBF20
    PUBLIC_KEY = 0x7F49
    PUBLIC_KEY_Q = 0xB0
    KEY_PARAMETER_REFERENCE = 0xF0
    SIGNATURE = 0x5F37


class KeyType(IntEnum):
    """Key type of the session keys in the CRT (GPC 2.3.1 §11.1.8 Table 11-16)."""

    AES = 0x88


class KeyUsageQualifier(IntEnum):
    """Key usage qualifier of the session keys (tag 95 of the CRT; Amd F Table B-1 builds it from
    GPC 2.3.1 §11.1.9: 10 = command, 20 = response, 04 = MAC, 08 = encryption)."""

    C_MAC_R_MAC = 0x34
    C_MAC_C_DEC = 0x1C
    C_MAC_C_DEC_R_MAC_R_ENC = 0x3C

    @property
    def security_level(self) -> SecurityLevel:
        """The SCP03 security level the session runs at (GPC 2.3.1 §11.1.2 Table 10-1)."""
        return SecurityLevel({0x34: 0x11, 0x1C: 0x03, 0x3C: 0x33}[self.value])
