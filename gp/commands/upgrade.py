"""MANAGE ELF UPGRADE (GlobalPlatform Card Specification v2.3 Amendment H, Executable Load File
Upgrade): the builders of the upgrade sequence and the parser of the card's answer.

An upgrade replaces an Executable Load File by a new version while its application instances
keep their data: START saves the instances of the ELF and removes the ELF, the new version is
loaded (INSTALL [for load] + LOAD with the same package AID), RESUME re-creates the instances
from the new ELF with their data; ABORT or RECOVERY end a session that cannot go on. The card
keeps the session across resets, and STATUS reports it (docs/elf-upgrade.md).

Wire values. The instruction byte ``EA`` and the action codes in P1 (START ``01``, RESUME ``02``,
RECOVERY ``03``, ABORT ``04``, STATUS ``08``) are the ones this project was given for
Amendment H; they could not be checked against the amendment's text here (docs/elf-upgrade.md
says so). The data objects of the command and of the answer, and the flag with which a card
announces support in its Card Capability Information, are this platform's own choice, made
in one place (this module) so the platform and the emulated card cannot drift apart:

* START data: ``4F <ELF AID>``; the other actions carry no data.
* Answer of every action (after ``9000``): ``80 01 <session status>`` then, while a session
  exists and the asking SD may see it, ``4F <ELF AID>`` and ``A1 { 4F <instance AID> ... }``
  (the saved instances); an action that ends a session adds ``81 01 <outcome>``.
* Support: GET DATA ``0067`` (the Card Capability Information template of GP 2.3) holds
  ``DF48 01 01``, a private-class tag of ours.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gp.commands._fields import _apdu, _check_aid
from gp.commands.constants import CLA_GP
from gp.errors import EncodingError
from gp.tlv import Tlv, decode_all, encode_tlv

#: Instruction byte of MANAGE ELF UPGRADE (Amendment H).
INS_MANAGE_ELF_UPGRADE = 0xEA
#: GET DATA tag of the Card Capability Information template (GP 2.3).
TAG_CARD_CAPABILITIES = 0x0067
#: Inside the Card Capability Information: ELF upgrade supported (value: version, ``01``). Our choice.
TAG_ELF_UPGRADE_SUPPORT = 0xDF48
ELF_UPGRADE_VERSION = 0x01

TAG_SESSION_STATUS = 0x80
TAG_OUTCOME = 0x81
TAG_AID = 0x4F
TAG_INSTANCES = 0xA1


class UpgradeAction(enum.IntEnum):
    """P1 of MANAGE ELF UPGRADE."""

    START = 0x01
    RESUME = 0x02
    RECOVERY = 0x03
    ABORT = 0x04
    STATUS = 0x08


class UpgradeSessionStatus(enum.IntEnum):
    """Where an upgrade session stands (the card keeps it in non-volatile memory)."""

    NO_SESSION = 0x00
    #: instances saved, old ELF removed: the new version is to be loaded
    WAITING_FOR_LOAD = 0x01
    #: the new version is loaded: RESUME re-creates the instances
    WAITING_FOR_RESUME = 0x02


class UpgradeOutcome(enum.IntEnum):
    """How an action that ended a session ended it."""

    #: the instances run from the new ELF, with their data
    UPGRADED = 0x01
    #: the old ELF and its instances are back, with their data
    ROLLED_BACK = 0x02


def _manage(action: UpgradeAction, data: bytes = b"") -> bytes:
    return _apdu(CLA_GP, INS_MANAGE_ELF_UPGRADE, int(action), 0x00, data, le=256)


def upgrade_start(elf_aid: bytes) -> bytes:
    """``80 EA 01 00 4F <ELF AID>``: save the ELF's instances with their data and remove the ELF."""
    return _manage(UpgradeAction.START, encode_tlv(TAG_AID, _check_aid(elf_aid, "ELF AID")))


def upgrade_resume() -> bytes:
    """``80 EA 02 00``: re-create the saved instances from the newly loaded ELF."""
    return _manage(UpgradeAction.RESUME)


def upgrade_recovery() -> bytes:
    """``80 EA 03 00``: end an interrupted session: complete it if the new ELF is loaded and keeps
    every instance, else roll back to the old ELF."""
    return _manage(UpgradeAction.RECOVERY)


def upgrade_abort() -> bytes:
    """``80 EA 04 00``: roll back to the old ELF and its instances (before RESUME completed)."""
    return _manage(UpgradeAction.ABORT)


def upgrade_status() -> bytes:
    """``80 EA 08 00``: the upgrade session on the card, if any (changes nothing)."""
    return _manage(UpgradeAction.STATUS)


@dataclass(frozen=True)
class UpgradeResponse:
    """The card's answer to MANAGE ELF UPGRADE."""

    status: UpgradeSessionStatus
    elf_aid: bytes = b""
    instances: tuple[bytes, ...] = ()
    outcome: UpgradeOutcome | None = None

    @property
    def in_session(self) -> bool:
        return self.status is not UpgradeSessionStatus.NO_SESSION


def _one_byte(tlv: Tlv, what: str) -> int:
    if len(tlv.value) != 1:
        raise EncodingError(f"MANAGE ELF UPGRADE {what} must be one byte")
    return tlv.value[0]


def parse_upgrade_response(data: bytes) -> UpgradeResponse:
    """Decode the answer's data (without SW1 SW2); :class:`EncodingError` if it is malformed."""
    objs = decode_all(data)
    tags = [t.tag for t in objs]
    if len(set(tags)) != len(tags) or not set(tags) <= {TAG_SESSION_STATUS, TAG_AID, TAG_INSTANCES, TAG_OUTCOME}:
        raise EncodingError("MANAGE ELF UPGRADE answer with unexpected or repeated data objects")
    found = {t.tag: t for t in objs}
    if TAG_SESSION_STATUS not in found:
        raise EncodingError("MANAGE ELF UPGRADE answer without a session status (80)")
    try:
        status = UpgradeSessionStatus(_one_byte(found[TAG_SESSION_STATUS], "session status"))
        outcome = UpgradeOutcome(_one_byte(found[TAG_OUTCOME], "outcome")) if TAG_OUTCOME in found else None
    except ValueError as exc:
        raise EncodingError(f"MANAGE ELF UPGRADE answer: {exc}") from exc
    elf_aid = found[TAG_AID].value if TAG_AID in found else b""
    instances: list[bytes] = []
    if TAG_INSTANCES in found:
        for inner in found[TAG_INSTANCES].children():
            if inner.tag != TAG_AID:
                raise EncodingError("MANAGE ELF UPGRADE instance list holds something other than 4F")
            instances.append(inner.value)
    for aid in (elf_aid, *instances) if elf_aid else instances:
        if not 5 <= len(aid) <= 16:
            raise EncodingError(f"MANAGE ELF UPGRADE answer names an AID of {len(aid)} bytes")
    if status is UpgradeSessionStatus.NO_SESSION and (elf_aid or instances):
        raise EncodingError("MANAGE ELF UPGRADE answer names an ELF without a session")
    return UpgradeResponse(status, elf_aid, tuple(instances), outcome)


def supports_elf_upgrade(card_capabilities: bytes) -> bool:
    """Whether the card announces ELF upgrade in its Card Capability Information: the data of
    GET DATA ``0067`` (with or without the ``67`` template). A card that answers GET DATA ``0067``
    with ``6A88`` has none: the caller passes nothing and gets False. Malformed data raises
    :class:`EncodingError`."""
    if not card_capabilities:
        return False
    objs = decode_all(card_capabilities)
    if len(objs) == 1 and objs[0].tag == TAG_CARD_CAPABILITIES:
        objs = decode_all(objs[0].value)
    flag = next((t for t in objs if t.tag == TAG_ELF_UPGRADE_SUPPORT), None)
    return flag is not None and len(flag.value) == 1 and flag.value[0] >= ELF_UPGRADE_VERSION


def card_capabilities(*, elf_upgrade: bool) -> bytes:
    """The ``67`` template this platform's cards answer (the card side, shared so both agree)."""
    body = encode_tlv(TAG_ELF_UPGRADE_SUPPORT, bytes((ELF_UPGRADE_VERSION,))) if elf_upgrade else b""
    return encode_tlv(TAG_CARD_CAPABILITIES, body)


def upgrade_response(
    status: UpgradeSessionStatus,
    elf_aid: bytes = b"",
    instances: tuple[bytes, ...] = (),
    outcome: UpgradeOutcome | None = None,
) -> bytes:
    """Encode an answer (the card side; :func:`parse_upgrade_response` reads it)."""
    out = encode_tlv(TAG_SESSION_STATUS, bytes((int(status),)))
    if elf_aid:
        out += encode_tlv(TAG_AID, elf_aid)
        out += encode_tlv(TAG_INSTANCES, b"".join(encode_tlv(TAG_AID, aid) for aid in instances))
    if outcome is not None:
        out += encode_tlv(TAG_OUTCOME, bytes((int(outcome),)))
    return out
