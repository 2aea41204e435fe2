"""The bank's policy (docs/keyservice.md, "The bank's policy"): which plain commands the service
wraps for the platform. ``DIR/policy.json`` is written by the bank's command line only.

Every refusal names the command (INS) and the AID that made it fail.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gp.apdu import CommandAPDU
from gp.commands import constants as k
from gp.commands.install import InstallCommand, parse_install
from gp.commands.management import parse_delete
from gp.commands.upgrade import INS_MANAGE_ELF_UPGRADE, UpgradeAction
from gp.errors import GPError
from gp.tlv import decode_all

INS_NAMES = {
    INS_MANAGE_ELF_UPGRADE: "MANAGE ELF UPGRADE",
    k.INS_GET_DATA: "GET DATA",
    0xCB: "GET DATA",
    k.INS_GET_STATUS: "GET STATUS",
    k.INS_INSTALL: "INSTALL",
    k.INS_LOAD: "LOAD",
    k.INS_DELETE: "DELETE",
    k.INS_SET_STATUS: "SET STATUS",
    k.INS_STORE_DATA: "STORE DATA",
    k.INS_PUT_KEY: "PUT KEY",
    k.INS_SELECT: "SELECT",
}
LOAD_LAST_BLOCK = 0x80  # LOAD P1 b8: last block (GP 2.3.1 §11.6.2.1)
TAG_LFDB = 0xC4  # Load File Data Block (§11.6.2.3), after optional DAP blocks (E2)


class PolicyRefusal(Exception):
    """A command the bank's policy does not allow; the message is the reason given to the caller."""


@dataclass(frozen=True)
class Release:
    package_aid: bytes
    lfdb_sha256: bytes
    approved_by: str = ""


@dataclass
class Policy:
    bank: str
    aid_prefixes: list[bytes]
    releases: list[Release] = field(default_factory=list)

    # --- storage -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Policy:
        raw = json.loads(path.read_text())
        return cls(
            bank=str(raw["bank"]),
            aid_prefixes=[bytes.fromhex(p) for p in raw["aid_prefixes"]],
            releases=[
                Release(bytes.fromhex(r["package_aid"]), bytes.fromhex(r["sha256"]), str(r.get("approved_by", "")))
                for r in raw.get("releases", [])
            ],
        )

    def save(self, path: Path) -> None:
        body = {
            "bank": self.bank,
            "aid_prefixes": [p.hex().upper() for p in self.aid_prefixes],
            "releases": [
                {
                    "package_aid": r.package_aid.hex().upper(),
                    "sha256": r.lfdb_sha256.hex(),
                    "approved_by": r.approved_by,
                }
                for r in self.releases
            ],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, path)

    def approve(self, package_aid: bytes, lfdb_sha256: bytes, by: str) -> None:
        if len(lfdb_sha256) != 32:
            raise ValueError("a release hash is the SHA-256 of the Load File Data Block (32 bytes)")
        self.releases = [r for r in self.releases if (r.package_aid, r.lfdb_sha256) != (package_aid, lfdb_sha256)]
        self.releases.append(Release(package_aid, lfdb_sha256, by))

    # --- checks --------------------------------------------------------------------------

    def in_range(self, aid: bytes) -> bool:
        return any(aid.startswith(prefix) for prefix in self.aid_prefixes)

    def require_in_range(self, aid: bytes, what: str) -> None:
        if not self.in_range(aid):
            raise PolicyRefusal(f"{what}: AID {aid.hex().upper()} is outside {self.bank}'s range")

    def approved_package(self, package_aid: bytes) -> bool:
        return any(r.package_aid == package_aid for r in self.releases)

    def approved_release(self, package_aid: bytes, lfdb_hash: bytes) -> bool:
        return any(r.package_aid == package_aid and r.lfdb_sha256 == lfdb_hash for r in self.releases)


@dataclass(frozen=True)
class CommandSummary:
    """What the journal keeps of a plain command: never its data."""

    ins: int
    p1: int
    p2: int
    aids: tuple[bytes, ...]
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {
            "ins": f"{self.ins:02X}",
            "p1": f"{self.p1:02X}",
            "p2": f"{self.p2:02X}",
            "aids": [a.hex().upper() for a in self.aids],
            "sha256": self.sha256,
        }


def summarize(plain: bytes, aids: tuple[bytes, ...] = ()) -> CommandSummary:
    head = plain[:4].ljust(4, b"\x00")
    return CommandSummary(head[1], head[2], head[3], aids, hashlib.sha256(plain).hexdigest())


@dataclass
class _PendingLoad:
    package_aid: bytes
    expected: bytes
    stream: bytearray = field(default_factory=bytearray)
    next_block: int = 0


class CallChecker:
    """Checks the plain commands of one exchange call, in order: a LOAD sequence must start with
    its INSTALL [for load] in the same call and end (last block) in it too."""

    def __init__(self, policy: Policy, sd_aid: bytes) -> None:
        self.policy, self.sd_aid = policy, sd_aid
        self._load: _PendingLoad | None = None

    def check(self, plain: bytes) -> CommandSummary:
        try:
            cmd = CommandAPDU.from_bytes(plain)
        except GPError as exc:
            raise PolicyRefusal(f"not a command APDU: {exc}") from None
        name = INS_NAMES.get(cmd.ins, f"INS {cmd.ins:02X}")
        if self._load is not None and cmd.ins != k.INS_LOAD:
            raise PolicyRefusal(
                f"{name} between LOAD blocks: the load of {self._load.package_aid.hex().upper()} is not finished"
            )
        try:
            aids = self._check(cmd, name)
        except GPError as exc:
            raise PolicyRefusal(f"{name}: malformed data ({exc})") from None
        return summarize(plain, aids)

    def finish(self) -> None:
        if self._load is not None:
            raise PolicyRefusal(f"LOAD of {self._load.package_aid.hex().upper()}: the last block is not in this call")

    def _check(self, cmd: CommandAPDU, name: str) -> tuple[bytes, ...]:
        if cmd.ins in (k.INS_GET_STATUS, k.INS_GET_DATA, 0xCB):
            return ()  # reading (GP 2.3.1 §11.3, §11.4)
        if cmd.ins == k.INS_INSTALL:
            return self._install(parse_install(cmd.p1, cmd.data))
        if cmd.ins == k.INS_LOAD:
            return self._load_block(cmd)
        if cmd.ins == k.INS_DELETE:
            # §11.2.2.3: 4F AID (or D0/D2 key references), optional 9E DM token
            delete = parse_delete(cmd.data)
            if not delete.aid:
                raise PolicyRefusal("DELETE of a key: refused (keys change only through put_key)")
            if delete.aid == self.sd_aid:
                raise PolicyRefusal(f"DELETE of the security domain itself ({delete.aid.hex().upper()}): refused")
            self.policy.require_in_range(delete.aid, "DELETE")
            return (delete.aid,)
        if cmd.ins == k.INS_SET_STATUS:
            # §11.10.2: P1 80 the card (the ISD's business), 40 an application or SD, 60 an SD and its apps
            if cmd.p1 not in (k.SET_STATUS_APP, k.SET_STATUS_SD_AND_APPS):
                raise PolicyRefusal(f"SET STATUS with P1 {cmd.p1:02X}: only an application or this SD")
            self.policy.require_in_range(cmd.data, "SET STATUS")
            return (cmd.data,)
        if cmd.ins == k.INS_STORE_DATA:
            return ()  # to this SD or the application INSTALL [for personalization] named (checked there)
        if cmd.ins == k.INS_PUT_KEY:
            raise PolicyRefusal("PUT KEY as a plain APDU: refused (ask for put_key)")
        if cmd.ins == INS_MANAGE_ELF_UPGRADE:
            return self._elf_upgrade(cmd)
        raise PolicyRefusal(f"{name} (CLA {cmd.cla:02X} INS {cmd.ins:02X}): not a command the bank allows")

    def _elf_upgrade(self, cmd: CommandAPDU) -> tuple[bytes, ...]:
        """MANAGE ELF UPGRADE (GP Amendment H, docs/elf-upgrade.md): START only of one of the
        bank's packages it approved (the new version's INSTALL [for load] and LOAD are checked
        as any load); RESUME, RECOVERY, ABORT and STATUS act on that session and carry no data."""
        if cmd.p1 == UpgradeAction.START:
            objects = decode_all(cmd.data)
            if len(objects) != 1 or objects[0].tag != 0x4F:
                raise PolicyRefusal("MANAGE ELF UPGRADE START: the data is 4F <package AID>")
            elf = objects[0].value
            self.policy.require_in_range(elf, "MANAGE ELF UPGRADE")
            if not self.policy.approved_package(elf):
                raise PolicyRefusal(f"MANAGE ELF UPGRADE of {elf.hex().upper()}: not an approved package")
            return (elf,)
        if cmd.p1 in (UpgradeAction.RESUME, UpgradeAction.RECOVERY, UpgradeAction.ABORT, UpgradeAction.STATUS):
            if cmd.data:
                raise PolicyRefusal("MANAGE ELF UPGRADE: only START carries data")
            return ()
        raise PolicyRefusal(f"MANAGE ELF UPGRADE with P1 {cmd.p1:02X}: not an action the bank allows")

    def _install(self, install: InstallCommand) -> tuple[bytes, ...]:
        kind = install.kind
        if kind == "load":
            # §11.5.2.3.1: Load File AID, SD AID (empty: this SD), LFDB hash
            if install.sd_aid and install.sd_aid != self.sd_aid:
                raise PolicyRefusal(f"INSTALL [for load] into {install.sd_aid.hex().upper()}: not this SD")
            if not self.policy.approved_release(install.elf_aid, install.lfdb_hash):
                raise PolicyRefusal(
                    f"INSTALL [for load] of {install.elf_aid.hex().upper()}: hash "
                    f"{install.lfdb_hash.hex() or '(none)'} is not a release the bank approved"
                )
            self._load = _PendingLoad(install.elf_aid, install.lfdb_hash)
            return (install.elf_aid,)
        if kind in ("install", "install_and_make_selectable"):
            if not self.policy.approved_package(install.elf_aid):
                raise PolicyRefusal(
                    f"INSTALL [for install] from {install.elf_aid.hex().upper()}: not an approved package"
                )
            self.policy.require_in_range(install.app_aid, "INSTALL [for install]")
            return (install.elf_aid, install.module_aid, install.app_aid)
        if kind in ("make_selectable", "personalization"):
            self.policy.require_in_range(install.app_aid, f"INSTALL [for {kind.replace('_', ' ')}]")
            return (install.app_aid,)
        raise PolicyRefusal(f"INSTALL [for {kind.replace('_', ' ')}]: not a command the bank allows")

    def _load_block(self, cmd: CommandAPDU) -> tuple[bytes, ...]:
        load = self._load
        if load is None:
            raise PolicyRefusal("LOAD without INSTALL [for load] of an approved release in the same call")
        if cmd.p2 != load.next_block & 0xFF:
            raise PolicyRefusal(f"LOAD block {cmd.p2} out of sequence (expected {load.next_block & 0xFF})")
        load.stream += cmd.data
        load.next_block += 1
        if not cmd.p1 & LOAD_LAST_BLOCK:
            return (load.package_aid,)
        self._load = None
        lfdb = [t.value for t in decode_all(bytes(load.stream)) if t.tag == TAG_LFDB]
        if len(lfdb) != 1 or hashlib.sha256(lfdb[0]).digest() != load.expected:
            raise PolicyRefusal(
                f"LOAD of {load.package_aid.hex().upper()}: the blocks do not hash to the approved release"
            )
        return (load.package_aid,)
