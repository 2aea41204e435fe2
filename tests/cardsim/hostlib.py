"""Host side used by the cardsim tests: a GP session over any ``transmit(bytes) -> bytes``.

Only `gp` (the platform's host library) speaks to the card here, so the tests exercise the
card exactly as the platform and third-party PC/SC tools do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cardsim.constants import DEFAULT_KEY
from cardsim.state import State
from gp import commands as c
from gp import dm
from gp.aids import ISD_AID
from gp.apdu import SW
from gp.cap import LoadFile
from gp.keys import StaticKeys
from gp.scp import SCP02, SCP03

Transmit = Callable[[bytes], bytes]


def sw_of(rapdu: bytes) -> int:
    return int.from_bytes(rapdu[-2:], "big")


class HostSession:
    """SELECT an SD, open SCP02/SCP03 with gp's host classes, send wrapped commands."""

    def __init__(
        self,
        transmit: Transmit,
        sd_aid: bytes = ISD_AID,
        *,
        scp: int = 3,
        key: bytes = DEFAULT_KEY,
        kvn: int | None = None,
        security_level: int | None = None,
    ) -> None:
        self.transmit = transmit
        self.sd_aid = sd_aid
        self.scp = scp
        kvn = kvn if kvn is not None else (0x30 if scp == 3 else 0x20)
        self.keys = StaticKeys.single(key, kvn)
        self.security_level = security_level if security_level is not None else (0x33 if scp == 3 else 0x03)
        self.channel: SCP02 | SCP03 | None = None

    def open(self) -> HostSession:
        r = self.transmit(c.select(self.sd_aid))
        assert sw_of(r) == SW.SUCCESS, f"SELECT {self.sd_aid.hex()} -> {r[-2:].hex()}"
        if self.scp == 3:
            self.channel = SCP03(self.keys, self.security_level, sd_aid=self.sd_aid)
        else:
            self.channel = SCP02(self.keys, self.security_level)
        r = self.transmit(self.channel.initialize_update())
        assert sw_of(r) == SW.SUCCESS, f"INITIALIZE UPDATE -> {r[-2:].hex()}"
        r = self.transmit(self.channel.external_authenticate(r))
        assert sw_of(r) == SW.SUCCESS, f"EXTERNAL AUTHENTICATE -> {r[-2:].hex()}"
        return self

    def send(self, plain: bytes) -> tuple[bytes, int]:
        assert self.channel is not None
        r = self.channel.unwrap(self.transmit(self.channel.wrap(plain)))
        return r[:-2], sw_of(r)

    def ok(self, plain: bytes) -> bytes:
        data, sw = self.send(plain)
        assert sw == SW.SUCCESS, f"{plain[:4].hex().upper()} -> {sw:04X}"
        return data

    @property
    def block_size(self) -> int:
        assert self.channel is not None
        return self.channel.max_data_length()

    # --- composite operations ------------------------------------------------------------

    def load(
        self,
        lf: LoadFile,
        *,
        sd_aid: bytes = b"",
        token_key: Any = None,
        daps: tuple[tuple[bytes, bytes], ...] = (),
        lfdb: bytes | None = None,
        with_hash: bool = True,
    ) -> list[tuple[bytes, int]]:
        """INSTALL [for load] + LOAD blocks (``daps``: (SD AID, signature) DAP blocks before the LFDB;
        ``lfdb``: send these bytes instead of the load file's LFDB, keeping its hash); returns
        (data, SW) of every command, stopping at an error."""
        h = lf.load_file_data_block_hash("sha256") if with_hash else b""
        lfdb = lf.load_file_data_block() if lfdb is None else lfdb
        token = b""
        if token_key is not None:
            token = dm.sign_token(token_key, dm.load_token_data(lf.package_aid, sd_aid, h))
        out = [self.send(c.install_for_load(lf.package_aid, sd_aid, h, token=token))]
        if out[-1][1] != SW.SUCCESS:
            return out
        for cmd in c.load_commands(lfdb, self.block_size, dap_blocks=daps):
            out.append(self.send(cmd))
            if out[-1][1] != SW.SUCCESS:
                break
        return out

    def install(
        self,
        elf: bytes,
        module: bytes,
        app: bytes,
        *,
        privileges: bytes = b"\x00",
        params: bytes = b"\xc9\x00",
        token_key: Any = None,
    ) -> tuple[bytes, int]:
        token = b""
        if token_key is not None:
            token = dm.sign_token(token_key, dm.install_token_data(elf, module, app, privileges, params))
        return self.send(c.install_for_install(elf, module, app, privileges, params, token=token))

    def delete(self, aid: bytes, *, related: bool = True, token_key: Any = None) -> tuple[bytes, int]:
        token = b""
        if token_key is not None:
            token = dm.sign_token(token_key, dm.delete_token_data(aid, related=related))
        return self.send(c.delete(aid, related=related, token=token))

    def status(self, p1: int, *, tagged: bool = True) -> list[c.RegistryEntry]:
        """GET STATUS with 6310 continuation; [] when the card answers 6A88 (nothing visible)."""
        data, sw = self.send(c.get_status(p1, tag_format=tagged))
        raw = data
        while sw == 0x6310:
            data, sw = self.send(c.get_status(p1, tag_format=tagged, next_occurrence=True))
            raw += data
        if sw == SW.REFERENCED_DATA_NOT_FOUND:
            return []
        assert sw == SW.SUCCESS, f"GET STATUS {p1:02X} -> {sw:04X}"
        return c.parse_get_status(raw, p1) if tagged else c.parse_get_status_legacy(raw, p1)

    def registry(self) -> dict[str, list[tuple[str, int]]]:
        """Comparable view: AIDs and life cycles of ISD, applications/SDs and ELFs (with modules)."""
        out: dict[str, list[tuple[str, int]]] = {}
        for p1, name in ((0x80, "isd"), (0x40, "apps"), (0x10, "elfs")):
            out[name] = sorted(
                (e.aid.hex().upper() + "".join("/" + m.hex().upper() for m in e.modules), e.lifecycle)
                for e in self.status(p1)
            )
        return out


def check_consistency(state: State) -> None:
    """Registry invariants a real card keeps (GP 2.3.1 §5, §9): no dangling references, no partial ELF."""
    apps, elfs, sds = state["apps"], state["elfs"], state["sds"]
    for aid, app in apps.items():
        assert app["elf"] in elfs, f"{aid}: ELF {app['elf']} missing"
        assert app["module"] in [m["aid"] for m in elfs[app["elf"]]["modules"]], f"{aid}: module missing"
        assert app["sd"] in sds, f"{aid}: associated SD {app['sd']} missing"
    for aid in sds:
        assert aid in apps, f"SD {aid} not in the registry"
    for aid, elf in elfs.items():
        assert elf["sd"] in sds, f"ELF {aid}: associated SD missing"
        for imp, major, minor in elf["imports"]:
            dep = elfs.get(imp)
            assert dep is not None and dep["version"][0] == major and dep["version"][1] >= minor, (
                f"ELF {aid}: import {imp} {major}.{minor} unresolved"
            )
        assert elf["rom"] or elf["size"] > 0
    assert set(apps).isdisjoint(elfs), "an AID is both an application and a load file"
