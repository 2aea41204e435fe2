"""Well-known application identifiers (one place: the card, the platform and the tests use these).

GlobalPlatform's registered application provider identifier is ``A000000151`` (ISO/IEC 7816-5).
"""

from __future__ import annotations

# GP 2.3.1 §7.1.1 and Table F-1 (GP's default): the Issuer Security Domain.
ISD_AID = bytes.fromhex("A000000151000000")
# The Security Domain package in ROM and its executable module, from which a Supplementary
# Security Domain is installed (INSTALL [for install], GP 2.3.1 §11.5.2.3).
SSD_PACKAGE_AID = bytes.fromhex("A0000001515350")
SSD_MODULE_AID = bytes.fromhex("A000000151535041")
