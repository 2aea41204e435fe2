"""What a stage's verified outcome changes in the platform's records, as values (no ORM).

A stage judges the registry the card R-MAC'd (``Stage.finish``) and returns these; the runner
(``updates.ota``) applies them in the exchange's transaction. Each names the security domain by
its record id; strings are the records' own (life cycle names, AIDs in upper-case hex, versions
``major.minor``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gp import commands
from gp.commands import SecurityDomainLifeCycle


@dataclass(frozen=True)
class SdLifecycle:
    """The SD's life cycle as the card listed it (GP 2.3.1 §5.3.3)."""

    sd: int
    lifecycle: str


@dataclass(frozen=True)
class SdKeyVersion:
    """The SD now opens with key version ``kvn``; the key sets of ``supersedes`` (if any) are retired."""

    sd: int
    kvn: int
    supersedes: int | None = None


@dataclass(frozen=True)
class PackageOnCard:
    """A load file the card holds in the SD (libraries included)."""

    sd: int
    package_aid: str
    version: str


@dataclass(frozen=True)
class AppletOnCard:
    """An applet instance the card lists (SELECTABLE), from its package and module."""

    sd: int
    instance_aid: str
    package_aid: str
    package_version: str
    module_aid: str


@dataclass(frozen=True)
class PackagesGone:
    """Load files the card proved deleted, with their instances."""

    sd: int
    package_aids: tuple[str, ...]


def sd_lifecycle(value: int) -> str:
    """Security domain life cycle byte to the records' state (GP 2.3.1 §5.3.3, coding §11.1.1)."""
    if value & commands.LOCKED_BIT:
        return "LOCKED"
    if value & SecurityDomainLifeCycle.PERSONALIZED == SecurityDomainLifeCycle.PERSONALIZED:
        return "PERSONALIZED"
    if value & SecurityDomainLifeCycle.SELECTABLE == SecurityDomainLifeCycle.SELECTABLE:
        return "SELECTABLE"
    return "INSTALLED"


@dataclass(frozen=True)
class PersonalizationDelivered:
    """The card R-MAC'd the last STORE DATA of these personalisation records."""

    records: tuple[int, ...]


@dataclass(frozen=True)
class InstancesReinstalled:
    """Instances deleted with their package and installed again (no ELF upgrade on the card):
    their personalisation must be delivered again."""

    sd: int
    instance_aids: tuple[str, ...]


@dataclass(frozen=True)
class ListedContent:
    """One entry of a registry listing the card R-MAC'd whole: an application or security domain
    (GET STATUS P1 40) or an executable load file with its modules (P1 10), GP 2.3.1 §11.4.3."""

    aid: str
    kind: str  # "app" | "sd" | "elf"
    lifecycle: int
    sd: str  # the associated security domain (tag CC); "" when the card named none
    elf: str = ""  # an application's load file (tag C4)
    version: str = ""  # a load file's version, "major.minor" (tag CE)
    modules: tuple[str, ...] = ()  # a load file's executable modules (tag 84)


@dataclass(frozen=True)
class RegistrySurveyed:
    """The card's whole registry as the ISD listed it, every listing complete and R-MAC'd: what a
    repair's survey job (``job``) proves is on the card, to diff against the records."""

    job: int
    content: tuple[ListedContent, ...]


@dataclass(frozen=True)
class IsdKeysRotated:
    """The card's ISD opens with the stored per-card key set of version ``kvn`` (a renewal's PUT
    KEY, proven by its R-MAC'd key check values or by a channel the new keys opened); the stored
    set of version ``supersedes`` (if any) is retired."""

    card: int
    kvn: int
    supersedes: int | None = None


@dataclass(frozen=True)
class CardValidityStored:
    """The card's ISD R-MAC'd these validity dates (ISO ``YYYY-MM-DD``) in its GET DATA of
    ``5F25``/``5F24`` after the renewal's STORE DATA."""

    card: int
    valid_from: str
    valid_until: str


@dataclass(frozen=True)
class CardLifecycle:
    """The card's life cycle (GP 2.3.1 §5.1.1) as its ISD proved it: an R-MAC'd GET STATUS P1 80
    listing, or for TERMINATED the R-MAC'd 9000 to SET STATUS (records' names: CARD_LOCKED, ...)."""

    card: int
    lifecycle: str


Effect = (
    SdLifecycle
    | SdKeyVersion
    | PackageOnCard
    | AppletOnCard
    | PackagesGone
    | PersonalizationDelivered
    | InstancesReinstalled
    | RegistrySurveyed
    | IsdKeysRotated
    | CardValidityStored
    | CardLifecycle
)
