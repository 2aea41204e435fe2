"""Over-the-air round trips: a ~30 KB CAP load through the relay API, batched vs one APDU per round trip.

The update: an ``update_applet`` job that loads a ~30 KB package into the bank's SSD (SCP03,
C-MAC + C-DEC + R-MAC, Delegated Management tokens and receipts) and installs its applet. The
package is the GPPro Empty CAP from ``../shared/testdata/cap`` (read at run time) with its Method
component padded with ``nop`` bytes to a 30 KB Load File Data Block — a valid CAP that the
emulated card parses, hashes, links and stores (it does not execute bytecode).

Each HTTP exchange of the agent sleeps for the injected round-trip time before it reaches the
server (Django in-process, SQLite on disk in a temp dir, the API through Django's test client);
the card is the in-process emulated card (``cardsim.transport.InProcessCard``).

Usage: ``python bench/bench_ota.py [--delays 0,50,100,200] [--kib 30] [--no-write]``. It prints a
table and replaces its own section in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import secrets
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchdoc import DOC, machine_note, require, write_section  # noqa: E402 - after the sys.path entry
from gp.cap import DIRECTORY, HEADER, METHOD, LoadFile  # noqa: E402 - after the sys.path entry

SECTION = "## OTA round trips"
SHARED = Path(os.environ.get("ECARD_SHARED_DIR", ROOT.parent / "shared"))
SOURCE_CAP = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
INSTANCE = "0102030405060708"


def synthetic_cap(source: bytes, lfdb_size: int, *, version: tuple[int, int] = (1, 0)) -> bytes:
    """``source`` (a CAP zip) with its Method component padded so the Load File Data Block is
    ``lfdb_size`` bytes, the Directory's size entry and the package version adjusted to match."""
    original = LoadFile.from_bytes(source)
    pad = lfdb_size - len(original.load_file_data_block())
    if pad < 0:
        raise ValueError(f"the source CAP is already larger than {lfdb_size} bytes")
    method = original.components[METHOD]
    info = method[3:] + bytes(pad)  # 0x00 is the nop bytecode
    if len(info) > 0xFFFF:
        raise ValueError("a Method component holds at most 65535 bytes")
    new = {
        METHOD: bytes((METHOD,)) + len(info).to_bytes(2, "big") + info,
        DIRECTORY: _set_u2(original.components[DIRECTORY], 3 + (METHOD - 1) * 2, len(info)),
        HEADER: _set_version(original.components[HEADER], version),
    }
    names = {HEADER: "Header.cap", DIRECTORY: "Directory.cap", METHOD: "Method.cap"}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            for tag, name in names.items():
                if item.filename.replace("\\", "/").rsplit("/", 1)[-1] == name:
                    data = new[tag]
            zout.writestr(item.filename, data)
    built = out.getvalue()
    require(len(LoadFile.from_bytes(built).load_file_data_block()) == lfdb_size, "built CAP has the wrong LFDB size")
    return built


def _set_u2(raw: bytes, offset: int, value: int) -> bytes:
    return raw[:offset] + value.to_bytes(2, "big") + raw[offset + 2 :]


def _set_version(header: bytes, version: tuple[int, int]) -> bytes:
    # header_component info: magic u4, minor u1, major u1, flags u1, package minor u1, major u1 (JCVM §6.3)
    at = 3 + 4 + 3
    return header[:at] + bytes((version[1], version[0])) + header[at + 2 :]


# ---------------------------------------------------------------------------------------------
# Django in-process


def setup_django(workdir: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "ecard.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["ECARD_CARDS_DIR"] = str(workdir / "cards")
    os.environ.setdefault("ECARD_MASTER_KEY", secrets.token_hex(32))  # a throwaway key for a throwaway DB
    os.environ.pop("CELERY_BROKER_URL", None)  # tasks in-process
    import django
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    django.setup()
    logging.disable(logging.WARNING)  # per-task INFO lines and kombu's broker warning would drown the table
    setup_test_environment()  # the test client's host, in-memory mail
    call_command("migrate", verbosity=0)


@dataclass
class Run:
    mode: str
    rtt_ms: int
    round_trips: int
    apdus: int
    wall: float
    lfdb: int


def make_server(token: str, delay: float) -> Any:
    from tests.otakit import ApiServer

    class DelayedServer(ApiServer):
        """The relay API with ``delay`` seconds of network round trip per HTTP exchange."""

        def open_session(self, mode: str) -> dict[str, Any]:
            time.sleep(delay)
            return super().open_session(mode)

        def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
            time.sleep(delay)
            return super().exchange(session, number, responses)

    return DelayedServer(token)


def one_update(cap: bytes, mode: str, rtt_ms: int) -> Run:
    """A fresh world (agency, Alpha Bank, citizen, card enrolled at Alpha), then the timed update."""
    from django.core.management import call_command

    from agent.core import run_session
    from cards.models import CardJob
    from tests.otakit import build_ota_world, enroll
    from updates.releases import create_release

    call_command("flush", interactive=False, verbosity=0)
    world = build_ota_world()
    enrollment = enroll(world)
    require(world.present().ok, "enrollment failed")
    release = create_release(bank=world.bank, cap_bytes=cap, filename="bench-30k.cap", actor=world.operator)
    CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.bank,
        security_domain_id=enrollment.security_domain_id,
        params={"packages": [{"release": release.pk, "instances": [INSTANCE]}]},
    )
    server = make_server(world.token, rtt_ms / 1000)
    transport = world.card_transport()
    start = time.perf_counter()
    result = run_session(transport, server, mode=mode)
    wall = time.perf_counter() - start
    require(result.ok and result.pending == 0, f"update did not complete: {result}")
    require(transport.state["elfs"]["0102030405"]["size"] == release.lfdb_size, "the card holds another load file")
    return Run(mode, rtt_ms, server.requests, result.apdus, wall, release.lfdb_size)


# ---------------------------------------------------------------------------------------------
# report


def report(runs: list[Run], kib: int, command: str) -> str:
    lines = [
        f"`{command}` — {machine_note()}.",
        "",
        f"One `update_applet` job: a {kib} KB package ({runs[0].lfdb:,} bytes of Load File Data Block) "
        "loaded into the bank's SSD and its applet installed — SCP03 SL 33 (C-MAC, C-DEC, R-MAC), "
        "Delegated Management token on INSTALL/LOAD and receipts checked — through the relay API "
        "(Django in-process, SQLite on disk) and the in-process emulated card. *RTT* is the "
        "network delay injected per HTTP exchange; *round trips* counts HTTP exchanges (session "
        "open included); *APDUs* counts C-APDUs the agent sent the card; *wall* is the whole "
        "session as the card holder waits for it; *server+card* is wall minus round trips × RTT.",
        "",
        "| mode | RTT ms | round trips | APDUs | wall s | server+card s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        rest = r.wall - r.round_trips * r.rtt_ms / 1000
        lines.append(f"| {r.mode} | {r.rtt_ms} | {r.round_trips} | {r.apdus} | {r.wall:.2f} | {rest:.2f} |")
    at100 = {r.mode: r for r in runs if r.rtt_ms == 100}
    if "batch" in at100:
        verdict = "met" if at100["batch"].wall < 1.0 else "NOT met"
        line = f"Target (a {kib} KB load under 1 s at 100 ms RTT, batched): {at100['batch'].wall:.2f} s — {verdict}"
        if "apdu" in at100:
            line += f"; per APDU the same load takes {at100['apdu'].wall:.1f} s"
        lines += ["", line + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delays", default="0,50,100,200", help="round-trip delays in ms, comma-separated")
    ap.add_argument("--kib", type=int, default=30, help="Load File Data Block size in KiB (default 30)")
    ap.add_argument("--modes", default="batch,apdu", help="relay modes, comma-separated")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    source = SHARED / "testdata" / "cap" / SOURCE_CAP
    if not source.exists():
        sys.exit(f"bench_ota: {source} not found (set ECARD_SHARED_DIR)")
    cap = synthetic_cap(source.read_bytes(), args.kib * 1024)
    delays = [int(d) for d in args.delays.split(",") if d.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        setup_django(Path(tmp))
        one_update(cap, "batch", 0)  # warm-up, not reported: first-request imports and caches
        for mode in modes:
            for rtt in delays:
                run = one_update(cap, mode, rtt)
                runs.append(run)
                print(
                    f"{mode:<5} RTT {rtt:3d} ms: {run.round_trips:3d} round trips, {run.apdus:3d} APDUs, "
                    f"{run.wall:6.2f} s",
                    flush=True,
                )
    command = "python bench/bench_ota.py"
    if args.delays != "0,50,100,200" or args.kib != 30 or args.modes != "batch,apdu":
        command += f" --delays {args.delays} --kib {args.kib} --modes {args.modes}"
    text = report(runs, args.kib, command)
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
