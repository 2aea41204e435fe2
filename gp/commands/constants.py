"""Class bytes, instruction bytes, data object tags and P1 values of the card content management
commands (GPC 2.3.1 §11; section numbers refer to GlobalPlatform Card Specification v2.3.1)."""

from __future__ import annotations

CLA_ISO = 0x00
CLA_GP = 0x80

INS_SELECT = 0xA4
INS_GET_DATA = 0xCA
INS_GET_STATUS = 0xF2
INS_INSTALL = 0xE6
INS_LOAD = 0xE8
INS_DELETE = 0xE4
INS_SET_STATUS = 0xF0
INS_STORE_DATA = 0xE2
INS_PUT_KEY = 0xD8

# GET DATA tags (§11.3.3.1, §H.4 / Amendment A for 66)
TAG_IIN = 0x42
TAG_CIN = 0x45
TAG_CARD_DATA = 0x66
TAG_KEY_INFO = 0xE0
TAG_SEQUENCE_COUNTER = 0xC1
TAG_KDD = 0xCF
TAG_CPLC = 0x9F7F

# GET STATUS P1 (§11.4.2.1)
STATUS_ISD = 0x80
STATUS_APPS = 0x40  # applications, including Security Domains
STATUS_ELF = 0x20  # Executable Load Files
STATUS_ELF_MODULES = 0x10  # Executable Load Files and their Executable Modules

# INSTALL P1 (§11.5.2.1)
INSTALL_MORE = 0x01
INSTALL_FOR_LOAD = 0x02
INSTALL_FOR_INSTALL = 0x04
INSTALL_FOR_MAKE_SELECTABLE = 0x08
INSTALL_FOR_EXTRADITION = 0x10
INSTALL_FOR_PERSONALIZATION = 0x20
INSTALL_FOR_REGISTRY_UPDATE = 0x40

# SET STATUS P1 (§11.10.2.1)
SET_STATUS_ISD = 0x80
SET_STATUS_APP = 0x40
SET_STATUS_SD_AND_APPS = 0x60

SHORT_MAX_DATA = 255
EXTENDED_MAX_DATA = 65535
MAX_LOAD_BLOCKS = 256  # P2 block number is one byte (§11.6.2.2)

# STORE DATA P1 (§11.11.2.1)
STORE_DATA_LAST = 0x80
STORE_DATA_ENC_APP = 0x20  # b7-b6 = 01: application dependent encryption
STORE_DATA_ENC = 0x60  # b7-b6 = 11: encrypted data
STORE_DATA_DGI = 0x08  # b5-b4 = 01: DGI format
STORE_DATA_BER = 0x10  # b5-b4 = 10: BER-TLV format
