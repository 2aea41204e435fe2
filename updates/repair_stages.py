"""The two ISD stages of a card repair (docs/repair.md): the survey that reads the whole registry,
and the deletion of content the platform's records do not know.

Both open a channel with the card's ISD (the agency's keys) and read GET STATUS P1 40 and 10
(applications and security domains; load files with their modules, GP 2.3.1 §11.4). As
everywhere in the engine, nothing is believed that the card did not R-MAC (DESIGN.md §7a): the
survey yields a registry only when both listings came back whole with R-MACs, and a deletion is
proven only by an R-MAC'd listing without the AID or an R-MAC'd 9000 to its DELETE.
"""

from __future__ import annotations

from typing import Any

from cards.models import AppletInstance, CardPackage, SecurityDomain
from gp import commands
from updates.engine.effects import Effect, ListedContent, RegistrySurveyed
from updates.ota import (
    STATUS_APPS,
    STATUS_ELF_MODULES,
    Command,
    IsdStage,
    JobFailed,
    KeyChoice,
    Registry,
    StepFailed,
    Unconfirmed,
    delete_command,
)


def _hex(value: bytes | None) -> str:
    return value.hex().upper() if value else ""


def _version(value: bytes | None) -> str:
    return f"{value[0]}.{value[1]}" if value and len(value) == 2 else ""


def listed_content(registry: Registry) -> tuple[ListedContent, ...]:
    """The registry's entries as values (AIDs in upper-case hex, versions ``major.minor``)."""
    out: list[ListedContent] = []
    for entry in registry.apps:
        out.append(
            ListedContent(
                aid=_hex(entry.aid),
                kind="sd" if entry.is_security_domain else "app",
                lifecycle=entry.lifecycle,
                sd=_hex(entry.associated_sd_aid),
                elf=_hex(entry.elf_aid),
            )
        )
    for entry in registry.elfs:
        out.append(
            ListedContent(
                aid=_hex(entry.aid),
                kind="elf",
                lifecycle=entry.lifecycle,
                sd=_hex(entry.associated_sd_aid),
                version=_version(entry.elf_version),
                modules=tuple(_hex(m) for m in entry.modules),
            )
        )
    return tuple(out)


class IsdSurvey(IsdStage):
    """Read the card's whole registry in a channel with the ISD (which sees every entry, §11.4.2):
    no script. Only listings that came back complete and R-MAC'd count; a bare ``6A88`` (no
    R-MAC, a relay could have made it up) leaves the survey unconfirmed and tried again."""

    name = "survey"
    status_p1 = (STATUS_APPS, STATUS_ELF_MODULES)

    def script(self, registry: Registry, channel: Any) -> list[Command]:
        return []

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        unproven = [f"{p1:02X}" for p1 in self.status_p1 if p1 not in registry.proven_listings]
        if unproven:
            raise Unconfirmed(
                f"the card's registry listing ({', '.join(unproven)}) carried no R-MAC: nothing can be surveyed from it"
            )
        return [RegistrySurveyed(self.job.pk, listed_content(registry))]


class IsdDeleteUnknown(IsdStage):
    """DELETE, with related objects (GP 2.3.1 §11.2.2.1, P2 80), content the records do not know:
    load files, applications or security domains of the job's ``delete`` list. The ISD needs no
    Delegated Management token (it manages the card's content itself, §9.1).

    Absence is proven as :class:`updates.plans.SsdRemovePackages` proves it: by a complete R-MAC'd
    listing without the AID or an R-MAC'd 9000 to its DELETE; a DELETE answered ``6A88`` (no
    R-MAC) proves nothing and the job is tried again."""

    name = "delete-unknown"
    status_p1 = (STATUS_APPS, STATUS_ELF_MODULES)

    def aids(self) -> list[str]:
        return [str(aid).upper() for aid in self.job.params.get("delete", [])]

    def preflight(self) -> None:
        """Never delete what the records hold now (a bank may have installed it since the survey)."""
        aids = self.aids()
        card = self.card
        known = (
            AppletInstance.objects.filter(security_domain__card=card, instance_aid__in=aids).exists()
            or CardPackage.objects.filter(security_domain__card=card, package_aid__in=aids).exists()
            or SecurityDomain.objects.filter(
                card=card,
                aid__in=aids,
                state__in=(SecurityDomain.State.ACTIVE, SecurityDomain.State.REMOVING),
            ).exists()
        )
        if known:
            raise JobFailed("the records now hold content this repair would delete: survey the card again")

    @staticmethod
    def gone(registry: Registry, aid: str) -> bool:
        return registry.app_absent(aid) and registry.elf_absent(aid)

    def script(self, registry: Registry, channel: Any) -> list[Command]:
        script = []
        for aid in self.aids():
            if self.gone(registry, aid):
                continue
            listed = registry.app(aid) is not None or registry.elf(aid) is not None
            script.append(
                delete_command(
                    aid, f"delete {aid}, unknown to the registry, with its related objects", may_be_absent=not listed
                )
            )
        return script

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        for aid in self.aids():
            if registry.app(aid) is not None or registry.elf(aid) is not None:
                raise StepFailed(f"{aid} is still on the card")
            if not self.gone(registry, aid):
                raise Unconfirmed(f"the card did not prove {aid} deleted (its answer carried no R-MAC)")
        return []


def lifecycle_locked(value: int) -> bool:
    """An application or SD life cycle with the LOCKED bit (GP 2.3.1 §11.1.1)."""
    return bool(value & commands.LOCKED_BIT)
