"""Fixed facts of the emulated card: AIDs, limits and the status words it uses."""

from __future__ import annotations

from functools import reduce

from gp.aids import ISD_AID, SSD_MODULE_AID, SSD_PACKAGE_AID  # noqa: F401 - re-exported for the card model
from gp.commands import Privileges

# The Java Card ROM profile (packages in ROM) is gp.javacard.ROM_PACKAGES: the platform validates
# releases against the same tuple.

DEFAULT_KEY = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
DEFAULT_SCP03 = (0x03, 0x70)  # SCP03, i=70: pseudo-random challenge, R-MAC, R-ENC (Amd D §5.1)
DEFAULT_SCP02 = (0x02, 0x55)  # SCP02, i=55 (GP 2.3.1 §E.1.1)
DEFAULT_KVN = {0x02: 0x20, 0x03: 0x30}

TOKEN_KVN = 0x70  # ISD Token Verification key (GP 2.3.1 §9.2.2, DESIGN §4)
RECEIPT_KVN = 0x71  # ISD Receipt key

# ISD privileges: SD, Card Lock, Card Terminate, Card Reset, CVM Management / Trusted Path,
# Authorized Management, Token Verification, Global Delete/Lock/Registry, Final Application /
# Receipt Generation (GP 2.3.1 §6.6.1: the ISD holds these by default).
ISD_PRIVILEGES = Privileges.from_bytes(bytes.fromhex("9EFE80"))

# Privileges only the ISD may hand out (GP 2.3.1 §6.6: card-wide authority stays with the issuer).
ISSUER_ONLY_PRIVILEGES = (
    Privileges.CARD_LOCK
    | Privileges.CARD_TERMINATE
    | Privileges.CARD_RESET
    | Privileges.CVM_MANAGEMENT
    | Privileges.TRUSTED_PATH
    | Privileges.AUTHORIZED_MANAGEMENT
    | Privileges.TOKEN_VERIFICATION
    | Privileges.GLOBAL_DELETE
    | Privileges.GLOBAL_LOCK
    | Privileges.GLOBAL_REGISTRY
    | Privileges.FINAL_APPLICATION
    | Privileges.RECEIPT_GENERATION
)

# Consecutive failed EXTERNAL AUTHENTICATEs after which a key set is blocked (INITIALIZE UPDATE → 6983).
# GP 2.3.1 leaves the limit to the card; real cards use 3..15. Configurable per card (init --auth-limit).
DEFAULT_AUTH_LIMIT = 3

DEFAULT_MEMORY = 128 * 1024  # non-volatile bytes for load files and instances
INSTANCE_COST = 256  # bytes of NVM an application instance takes (SD: twice that)
MAX_BLOCK = 0xFF  # 9F65: maximum length of data field in command message
GET_STATUS_CHUNK = 200  # plain bytes of registry entries per GET STATUS response before 6310

# ATR: TS 3B, T0 8A (TD1, 10 historical bytes), TD1 80 (TD2), TD2 01 (T=1), "ECARD-SIM1", TCK.
_ATR_BODY = bytes.fromhex("8A8001") + b"ECARD-SIM1"
DEFAULT_ATR = b"\x3b" + _ATR_BODY + bytes([reduce(lambda a, b: a ^ b, _ATR_BODY, 0)])

# The read-back of an instance's personalisation: ``80 CA 00 FE 00`` to the selected instance
# returns the data its last complete STORE DATA sequence carried (6A88 if none). Emulation only.
READ_BACK = (0x80, 0xCA, 0x00, 0xFE)

# Status words are gp.apdu.SW (one vocabulary for the card, the host and the tests).
