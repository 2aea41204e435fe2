"""Throughput of the host secure channel: wrap + unwrap pairs per second, one core.

Each pair is one LOAD block (``80 E8 00 nn EF`` + 239 bytes, the largest block that
fits a short APDU with C-DEC + C-MAC in SCP02 and SCP03 S8) wrapped by the host,
and the card's (R-MAC'd where the level asks for it) ``9000`` unwrapped by the host.
The card-side responses are computed before the timed loop, so the first columns
measure the host alone; the last column times the full host + card round trip.

SCP11b (GP Amendment F) is measured beside them: handshakes per second (the host's
INTERNAL AUTHENTICATE and ``complete``, with the card side's answer computed in the loop
and alone), then wrap/unwrap pairs on the SCP03 secure messaging it opens.

Usage: ``python -m bench.bench_scp [--n 20000] [--no-write]``. It prints a table
and replaces its own section in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchdoc import DOC, machine_note, require, write_section
from gp.scp import SCP02, SCP03, StaticKeys
from gp.scp.card import CardSCP02, CardSCP03
from gp.scp11 import CardSCP11, CertificateAuthority, Curve, KeyPair, KeyUsage, SCP11b, SDKey

SCP11_KVN = 0x01

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


def _pairs(
    open_channel: Callable[[], tuple[Any, Any]], restore: Callable[[dict[str, Any]], Any], n: int, rounds: int = 3
) -> tuple[float, float, int]:
    """(host pairs/s, host+card pairs/s, payload) on channels ``open_channel`` opens (host, card);
    ``restore`` rebuilds the host from its session state for each timed round."""
    host, card = open_channel()
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
        h = restore(dict(snapshot))
        wrap, unwrap = h.wrap, h.unwrap
        t0 = time.perf_counter()
        for c, r in zip(cmds, responses, strict=True):
            wrap(c)
            unwrap(r)
        best = max(best, n / (time.perf_counter() - t0))
    # full round trip: host wrap, card unwrap, card wrap, host unwrap
    host, card = open_channel()
    t0 = time.perf_counter()
    for c in cmds:
        card.unwrap_command(host.wrap(c))
        host.unwrap(card.wrap_response(b"\x90\x00"))
    full = n / (time.perf_counter() - t0)
    return best, full, payload


def bench_one(name: str, sl: int, opts: dict[str, Any], n: int) -> tuple[float, float, int]:
    cls = SCP02 if name.startswith("SCP02") else SCP03

    def open_channel() -> tuple[Any, Any]:
        host, card, _cls = _open(name, sl, opts)
        return host, card

    return _pairs(open_channel, lambda snapshot: cls.from_session_state(None, snapshot), n)


def _scp11b_pair(curve: Curve) -> tuple[Callable[[], SCP11b], Callable[[], CardSCP11]]:
    """Factories of a fresh host and a fresh card (SD key certified by a throwaway card CA)."""
    card_ca = CertificateAuthority.generate(b"\xa6\x01", curve, "bench card CA", os.urandom)
    sd = KeyPair.generate(curve, os.urandom)
    certificate = card_ca.issue(
        serial_number=b"\x01",
        subject_identifier=b"\x5d\x01",
        public_key=sd.public_key,
        key_usage=KeyUsage.KEY_AGREEMENT,
        expiration_date=dt.date(2099, 1, 1),
    )
    key = SDKey(sd.private_key, SCP11_KVN, 0x13, (certificate.encode(),))
    today = dt.date.today()

    def host() -> SCP11b:
        return SCP11b(sd.public_point, SCP11_KVN)

    def card() -> CardSCP11:
        return CardSCP11([key], [], today=lambda: today, random=os.urandom)

    return host, card


def bench_scp11b(curve: Curve, n: int, handshakes: int) -> tuple[float, float, float, float, int]:
    """(host handshakes/s, host+card handshakes/s, host pairs/s, host+card pairs/s, payload)."""
    new_host, new_card = _scp11b_pair(curve)
    card = new_card()
    # host alone: each card answer depends on the host's ephemeral key, so they are made first
    pending = []
    for _ in range(handshakes):
        h = new_host()
        pending.append((h, card.process(h.internal_authenticate())))
    t0 = time.perf_counter()
    for h, answer in pending:
        h.complete(answer)
    host_handshakes = handshakes / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(handshakes):
        h = new_host()
        h.complete(card.process(h.internal_authenticate()))
    full_handshakes = handshakes / (time.perf_counter() - t0)
    # secure messaging on the opened channel (SCP03 rules, security level 0x33), as bench_one

    def open_channel() -> tuple[SCP11b, CardSCP11]:
        host, card = new_host(), new_card()
        host.complete(card.process(host.internal_authenticate()))
        return host, card

    best, full_pairs, payload = _pairs(open_channel, SCP11b.from_session_state, n)
    return host_handshakes, full_handshakes, best, full_pairs, payload


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
    handshakes = max(50, args.n // 100)
    lines += [
        "",
        "SCP11b (GP Amendment F; `gp.scp11`): *handshakes/s* = the host's INTERNAL AUTHENTICATE "
        "plus `complete` (ECDH twice, X9.63 KDF, receipt check), card answers precomputed; "
        "*with card* adds the card side (its ephemeral key, both ECDHs, the receipt). Then "
        "wrap/unwrap pairs on the channel it opens (SCP03 secure messaging, SL 33).",
        "",
        "| channel | handshakes/s | with card | payload | host pairs/s | host+card pairs/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for curve, label in ((Curve.P256, "SCP11b P-256 AES-128"), (Curve.P384, "SCP11b P-384 AES-256")):
        hs, hs_full, pairs, pairs_full, payload = bench_scp11b(curve, args.n, handshakes)
        print(
            f"{label:<22} handshakes {hs:7,.0f}/s (with card {hs_full:7,.0f}/s)  payload {payload:3d}  "
            f"host {pairs:9,.0f}/s  host+card {pairs_full:9,.0f}/s",
            flush=True,
        )
        lines.append(f"| {label} | {hs:,.0f} | {hs_full:,.0f} | {payload} | {pairs:,.0f} | {pairs_full:,.0f} |")
    text = "\n".join(lines)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
