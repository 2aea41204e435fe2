"""Throughput of the host secure channel: wrap + unwrap pairs per second, one core.

Each pair is one LOAD block (``80 E8 00 nn EF`` + 239 bytes, the largest block that
fits a short APDU with C-DEC + C-MAC in SCP02 and SCP03 S8) wrapped by the host,
and the card's (R-MAC'd where the level asks for it) ``9000`` unwrapped by the host.
The card-side responses are computed before the timed loop, so the first columns
measure the host alone; the last column times the full host + card round trip.

Usage: ``python -m bench.bench_scp [--n 20000] [--no-write]``. It prints a table
and replaces its own section in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchdoc import DOC, machine_note, require, write_section
from gp.scp import SCP02, SCP03, StaticKeys
from gp.scp.card import CardSCP02, CardSCP03

SECTION = "## SCP wrap/unwrap throughput"
PAYLOAD = 239

CONFIGS: list[tuple[str, int, dict[str, Any]]] = [
    ("SCP02 i=55", 0x01, {}),
    ("SCP02 i=55", 0x03, {}),
    ("SCP02 i=55", 0x11, {}),
    ("SCP02 i=55", 0x13, {}),
    ("SCP03 AES-128 S8", 0x01, {"kl": 16}),
    ("SCP03 AES-128 S8", 0x03, {"kl": 16}),
    ("SCP03 AES-128 S8", 0x11, {"kl": 16}),
    ("SCP03 AES-128 S8", 0x13, {"kl": 16}),
    ("SCP03 AES-128 S8", 0x33, {"kl": 16}),
    ("SCP03 AES-256 S8", 0x33, {"kl": 32}),
    ("SCP03 AES-128 S16", 0x33, {"kl": 16, "s16": True}),
]


def _open(name: str, sl: int, opts: dict[str, Any]) -> tuple[Any, Any, type]:
    if name.startswith("SCP02"):
        keys = StaticKeys.single(os.urandom(16), 0x20)
        card: Any = CardSCP02(keys, i=0x55)
        host: Any = SCP02(keys, security_level=sl, i=0x55)
        cls: type = SCP02
    else:
        kl = opts["kl"]
        s16 = opts.get("s16", False)
        keys = StaticKeys.single(os.urandom(kl))
        card = CardSCP03(keys, s16=s16, i=0x71 if s16 else 0x70)
        host = SCP03(keys, security_level=sl, s16=s16)
        cls = SCP03
    status = card.external_authenticate(host.external_authenticate(card.initialize_update(host.initialize_update())))
    require(status == b"\x90\x00", f"EXTERNAL AUTHENTICATE answered {status.hex()}")
    return host, card, cls


def _commands(n: int, payload: int) -> list[bytes]:
    data = os.urandom(payload)
    return [bytes((0x80, 0xE8, 0x00, i & 0xFF, payload)) + data for i in range(n)]


def bench_one(name: str, sl: int, opts: dict[str, Any], n: int, rounds: int = 3) -> tuple[float, float, int]:
    host, card, cls = _open(name, sl, opts)
    payload = min(PAYLOAD, host.max_data_length())
    cmds = _commands(n, payload)
    snapshot = host.session_state()
    # card responses computed ahead (they depend on the MAC chaining values)
    responses = []
    for c in cmds:
        card.unwrap_command(host.wrap(c))
        responses.append(card.wrap_response(b"\x90\x00"))
    best = 0.0
    for _ in range(rounds):
        h = cls.from_session_state(None, snapshot)
        wrap, unwrap = h.wrap, h.unwrap
        t0 = time.perf_counter()
        for c, r in zip(cmds, responses, strict=True):
            wrap(c)
            unwrap(r)
        best = max(best, n / (time.perf_counter() - t0))
    # full round trip: host wrap, card unwrap, card wrap, host unwrap
    host, card, _ = _open(name, sl, opts)
    t0 = time.perf_counter()
    for c in cmds:
        card.unwrap_command(host.wrap(c))
        host.unwrap(card.wrap_response(b"\x90\x00"))
    full = n / (time.perf_counter() - t0)
    return best, full, payload


def _machine() -> str:
    import cryptography

    return machine_note(f"cryptography {cryptography.__version__} (OpenSSL {_openssl()})", load=False)


def _openssl() -> str:
    from cryptography.hazmat.backends.openssl import backend

    return backend.openssl_version_text().replace("OpenSSL ", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="APDU pairs per configuration")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = []
    for name, sl, opts in CONFIGS:
        host_rate, full_rate, payload = bench_one(name, sl, opts, args.n)
        rows.append((name, sl, payload, host_rate, full_rate))
        print(
            f"{name:<20} SL {sl:02X}  payload {payload:3d}  host {host_rate:9,.0f}/s  host+card {full_rate:9,.0f}/s",
            flush=True,
        )
    lines = [
        f"`python bench/bench_scp.py --n {args.n}` — {_machine()}; pinned to one core.",
        "",
        "One pair = host `wrap` of a LOAD C-APDU (`80 E8 00 nn`, payload bytes as shown) plus host "
        "`unwrap` of the card's `9000` (with R-MAC where the level has it). *host* = pairs/s of "
        "the host channel alone (best of 3, card responses precomputed); *host+card* = pairs/s of "
        "the full loop including the card side (`gp.scp.card`).",
        "",
        "| channel | SL | payload | host pairs/s | host+card pairs/s |",
        "|---|---|---:|---:|---:|",
    ]
    for name, sl, payload, host_rate, full_rate in rows:
        lines.append(f"| {name} | {sl:02X} | {payload} | {host_rate:,.0f} | {full_rate:,.0f} |")
    text = "\n".join(lines)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
