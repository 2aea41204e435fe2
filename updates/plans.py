"""Update plans: install, upgrade or remove a bank's applet packages inside its own SSD.

Upgrading package P from version A to B (GP 2.3.1 §11.2, §11.5, §11.6):

1. DELETE P with its related objects (its instances) — one token, one receipt;
2. INSTALL [for load] of B into the bank's SSD, with the Load File Data Block hash;
3. LOAD B in blocks sized for the secure channel's overhead;
4. INSTALL [for install and make selectable] of each instance, same instance AIDs;
5. GET STATUS to verify.

Each step is skipped when the card's registry shows it done, so an interrupted update resumes.
Packages are loaded libraries first (a package after every package it imports) and deleted in
the reverse order, as a card refuses to delete a load file others still import.
"""

from __future__ import annotations

from typing import Any

from cards.models import CardJob
from gp import commands
from gp.apdu import SW
from updates.engine.effects import AppletOnCard, Effect, InstancesReinstalled, PackageOnCard, PackagesGone
from updates.models import Release
from updates.ota import (
    STATUS_APPS,
    STATUS_ELF_MODULES,
    BankSsdStage,
    Command,
    KeyChoice,
    Registry,
    SsdInstallApplets,
    Stage,
    StepFailed,
    Unconfirmed,
    delete_command,
    install_command,
    load_script,
    with_token,
)


def version_bytes(version: str) -> bytes:
    major, minor = (int(x) for x in version.split("."))
    return bytes((major, minor))


def load_order(releases: list[Release]) -> list[Release]:
    """Topological order over imports among the given releases (libraries first)."""
    by_aid = {r.package_aid: r for r in releases}
    ordered: list[Release] = []
    visiting: set[str] = set()

    def visit(release: Release) -> None:
        if release in ordered:
            return
        if release.package_aid in visiting:
            raise StepFailed(f"circular imports around {release.package_aid}")
        visiting.add(release.package_aid)
        for imported in release.imports:
            dependency = by_aid.get(imported["aid"])
            if dependency is not None:
                visit(dependency)
        visiting.discard(release.package_aid)
        ordered.append(release)

    for release in releases:
        visit(release)
    return ordered


class SsdUpdatePackages(BankSsdStage):
    """Bring the SSD's packages to the job's releases: delete old versions, load, install instances."""

    name = "update-packages"
    status_p1 = (STATUS_APPS, STATUS_ELF_MODULES)

    custody_key_choices = SsdInstallApplets.custody_key_choices
    preflight = SsdInstallApplets.preflight

    def specs(self) -> list[dict[str, Any]]:
        return list(self.job.params.get("packages", []))

    def releases(self) -> list[Release]:
        return load_order([Release.objects.get(pk=spec["release"]) for spec in self.specs()])

    def instances_of(self, release: Release) -> list[str]:
        spec = next(s for s in self.specs() if s["release"] == release.pk)
        return [aid.upper() for aid in spec.get("instances", [])]

    def upgrades_in_place(self) -> bool:
        """Amendment H where the card has it (``Card.elf_upgrade``); every step is still checked
        against the registry the card R-MACs, so a wrong belief costs an attempt, never data."""
        return self.card.elf_upgrade

    def recorded_versions(self) -> dict[str, str]:
        return dict(self.job_sd().packages.values_list("package_aid", "package_version"))

    def install_options(self, release: Release, instance: str) -> dict[str, Any]:
        """What an install campaign gave for this instance: module, privileges, C9 parameters."""
        spec = next(s for s in self.specs() if s["release"] == release.pk)
        for option in spec.get("install") or []:
            if str(option.get("instance_aid", "")).upper() == instance:
                return dict(option)
        return {}

    def script(self, registry: Registry, channel: Any) -> list[Command]:
        sd = self.job_sd()
        card = self.card
        releases = self.releases()
        deletes: list[Command] = []
        loads: list[Command] = []
        recorded = self.recorded_versions() if self.upgrades_in_place() else {}
        for release in releases:
            elf = registry.elf(release.package_aid)
            current = elf.elf_version if elf is not None else None
            target = version_bytes(release.package_version)
            if (
                self.upgrades_in_place()
                and release.package_aid in recorded
                and recorded[release.package_aid] != release.package_version
            ):
                interrupted = elf is None or (
                    current == target and any(registry.app(i) is None for i in self.instances_of(release))
                )
                if interrupted:
                    # An upgrade session an earlier attempt left open (the package is set aside or
                    # the new version waits for RESUME): RECOVERY completes or rolls it back, and
                    # the registry the card R-MACs next decides what is left to do.
                    loads.append(recovery_command(release))
                    continue
                if current != target:
                    loads += upgrade_script(card, sd, release, channel)
                    continue
            if elf is not None and current != version_bytes(release.package_version):
                apdu = commands.delete(bytes.fromhex(release.package_aid), related=True)
                receipt = {"op": "delete", "fields": [release.package_aid]} if sd.management == "dm" else None
                deletes.append(
                    Command(
                        with_token(card, sd, apdu), f"delete {release.package_aid} v{_fmt(current)}", receipt=receipt
                    )
                )
                elf = None
            if elf is None:
                loads += load_script(card, sd, release, channel)
            for instance in self.instances_of(release):
                options = self.install_options(release, instance)
                module = options.get("module_aid") or (release.applet_aids[0] if release.applet_aids else "")
                if elf is None or registry.app(instance) is None:
                    loads.append(
                        install_command(
                            card,
                            sd,
                            release.package_aid,
                            str(module).upper(),
                            instance,
                            release=release,
                            privileges=str(options.get("privileges") or ""),
                            install_params=str(options.get("install_params") or ""),
                        )
                    )
        return list(reversed(deletes)) + loads

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        sd = self.job_sd()
        effects: list[Effect] = []
        releases = self.releases()
        for release in releases:
            elf = registry.elf(release.package_aid)
            if elf is None or elf.elf_version != version_bytes(release.package_version):
                raise StepFailed(f"{release.package_aid} v{release.package_version} is not on the card", tuple(effects))
            effects.append(PackageOnCard(sd.pk, release.package_aid, release.package_version))
            for instance in self.instances_of(release):
                if registry.app(instance) is None:
                    raise StepFailed(f"instance {instance} is not on the card", tuple(effects))
                module = release.applet_aids[0] if release.applet_aids else ""
                effects.append(AppletOnCard(sd.pk, instance, release.package_aid, release.package_version, module))
        # Instances installed afresh have lost their data: a package deleted and reinstalled (no ELF
        # upgrade on the card), or instances a repair restored (updates.repair).
        reinstalled = [str(aid).upper() for aid in self.job.params.get("repersonalize", [])]
        if not self.upgrades_in_place():
            recorded = self.recorded_versions()
            reinstalled += [
                instance
                for release in releases
                if recorded.get(release.package_aid, release.package_version) != release.package_version
                for instance in self.instances_of(release)
                if instance not in reinstalled
            ]
        if reinstalled:
            effects.append(InstancesReinstalled(sd.pk, tuple(reinstalled)))
        return effects


class SsdRemovePackages(BankSsdStage):
    """DELETE packages (with their instances) from the bank's SSD."""

    name = "remove-packages"
    status_p1 = (STATUS_APPS, STATUS_ELF_MODULES)

    custody_key_choices = SsdInstallApplets.custody_key_choices
    preflight = SsdInstallApplets.preflight

    def package_aids(self) -> list[str]:
        return [aid.upper() for aid in self.job.params.get("remove", [])]

    def script(self, registry: Registry, channel: Any) -> list[Command]:
        sd = self.job_sd()
        out = []
        for aid in self.package_aids():
            if registry.elf_absent(aid):
                continue
            # Not listed but not proven absent (a bare 6A88 listing): DELETE anyway, accepting
            # 6A88; only an R-MAC'd 9000 (and the DM receipt) proves the package gone.
            command = delete_command(
                aid,
                f"delete {aid}",
                may_be_absent=registry.elf(aid) is None,
                receipt={"op": "delete", "fields": [aid]} if sd.management == "dm" else None,
            )
            command.apdu = with_token(self.card, sd, command.apdu)
            out.append(command)
        return out

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        for aid in self.package_aids():
            if registry.elf(aid) is not None:
                raise StepFailed(f"{aid} is still on the card")
            if not registry.elf_absent(aid):
                raise Unconfirmed(f"the card did not prove {aid} deleted (its answer carried no R-MAC)")
        return [PackagesGone(self.job_sd().pk, tuple(self.package_aids()))]


def upgrade_script(card: Any, sd: Any, release: Release, channel: Any) -> list[Command]:
    """MANAGE ELF UPGRADE START, the new version's INSTALL [for load] and LOAD under the same
    package AID, then RESUME (GP Amendment H; docs/elf-upgrade.md): the instances keep their AIDs
    and data. Only the R-MAC'd registry after it proves the upgrade."""
    aid = release.package_aid
    load = load_script(card, sd, release, channel)
    if load[-1].dap_checked:
        # The card may refuse the new version's DAP at the last block: the script then goes on,
        # RESUME finds nothing loaded, and RECOVERY puts the old version back in the same batch.
        load[-1].expect = (SW.SUCCESS, SW.SECURITY_STATUS_NOT_SATISFIED)
    return [
        Command(commands.upgrade_start(bytes.fromhex(aid)), f"set {aid} aside for its upgrade (instances kept)"),
        *load,
        Command(
            commands.upgrade_resume(),
            f"resume {aid}'s instances on v{release.package_version}",
            (SW.SUCCESS, SW.CONDITIONS_NOT_SATISFIED) if load[-1].dap_checked else (SW.SUCCESS,),
        ),
        *([recovery_command(release)] if load[-1].dap_checked else []),
    ]


def recovery_command(release: Release) -> Command:
    """RECOVERY of an interrupted upgrade session (any answer: only the registry proves the outcome)."""
    return Command(
        commands.upgrade_recovery(),
        f"recover the interrupted upgrade of {release.package_aid}",
        (SW.SUCCESS, SW.CONDITIONS_NOT_SATISFIED, SW.INS_NOT_SUPPORTED),
    )


def _fmt(version: bytes | None) -> str:
    return f"{version[0]}.{version[1]}" if version and len(version) == 2 else "?"


def update_stages(job: CardJob) -> list[type[Stage]]:
    stages: list[type[Stage]] = []
    if job.params.get("remove"):
        stages.append(SsdRemovePackages)
    if job.params.get("packages"):
        stages.append(SsdUpdatePackages)
    if job.params.get("applets"):
        stages.append(SsdInstallApplets)
    return stages
