"""Load benchmark: N concurrent agents drive complete card sessions against ``make prod-local``.

    python bench/bench_load.py --agents 1,10,50,200 --seconds 20 --server https://127.0.0.1:8000

Each agent owns one emulated card (``seed_load`` creates the cards, with the load bank enrolled,
and their device tokens; this script runs it when the cards are missing) and loops: its card gets
a small job (lock, then unlock, ... of the bank's security domain, queued through
``cards.services`` the way a bank operator's request is), then the agent presents the card over
HTTP(S): identify, open a secure channel with the ISD, read the registry, run the job's script,
verify it with GET STATUS — five HTTP exchanges, one persistent connection per agent. Agents run
as threads in a few processes (``--processes``; the agent side must not be the bottleneck).

Reported per N: complete sessions/s inside the window, latency percentiles of every HTTP exchange,
errors, and the CPU (cores) of the server's processes from /proc: gunicorn master and workers,
the Celery workers and beat, PostgreSQL and Redis (all their processes on this machine), and the
bench itself. The table replaces the "## Load" section of docs/benchmarks.md (``--no-write`` to
skip). The last line printed is ``N agents: X sessions/s, p50 A ms, p99 B ms, E errors`` for the
last N.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadkit import (  # noqa: E402 - after the sys.path entry
    LoadResult,
    Topology,
    pids_named,
    read_tokens,
    run_load,
)

SECTION = "## Load"
DOC = ROOT / "docs" / "benchmarks.md"
# Card state files on tmpfs: the emulated cards fsync every state change (a real card writes its own
# EEPROM); on disk those fsyncs would compete with PostgreSQL's WAL for the same device.
SHM = Path("/dev/shm")  # noqa: S108 - a private per-user directory (0700) is made below it
DEFAULT_CARDS_DIR = SHM / f"ecard-load-cards-{os.getuid()}" if SHM.is_dir() else ROOT / "var" / "load-cards"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ensure_cards(topology: Topology, cards_dir: Path, count: int) -> Path:
    cards_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if cards_dir.stat().st_uid != os.getuid():
        raise SystemExit(f"{cards_dir} belongs to another user")
    tokens = cards_dir / "load-tokens.jsonl"
    try:
        rows = read_tokens(tokens, count)
        if all(Path(row["state_file"]).exists() for row in rows):
            return tokens
    except (OSError, RuntimeError, ValueError):
        pass
    print(f"seeding {count} load cards into {cards_dir} ...", flush=True)
    env = dict(os.environ)
    env.update(topology.overrides)
    env.update(ECARD_CARDS_DIR=str(cards_dir), LOG_LEVEL="WARNING")
    started = time.monotonic()
    subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "prod_local.sh"),
            "manage",
            "seed_load",
            "--cards",
            str(count),
            "--tokens",
            str(tokens),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=3600,
    )
    print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)
    return tokens


def server_groups(topology: Topology) -> dict[str, list[int]]:
    groups = topology.process_groups()
    groups["postgres"] = pids_named(["postgres", "postmaster"])
    groups["redis"] = pids_named(["redis-server"])
    return groups


def default_processes(agents: int) -> int:
    if agents <= 1:
        return 1
    return min(agents, 4)


def render(results: list[LoadResult], header: str) -> str:
    lines = [
        SECTION,
        "",
        header,
        "",
        "A *session* is one complete card presentation over HTTPS with one small job: identify the card, open "
        "an SCP03 secure channel with the ISD (INITIALIZE UPDATE, EXTERNAL AUTHENTICATE), read the registry, "
        "lock or unlock the load bank's security domain (SET STATUS) and verify it with GET STATUS — 5 HTTP "
        "exchanges (session open included), 9 APDUs, the job queued before the session through "
        "`cards.services` (counted in *queue ms*, not in the exchange latencies). *p50/p90/p99* are per HTTP "
        "exchange. *CPU* is cores used during the window (2 = the whole machine): web = gunicorn master and "
        "workers, celery = both workers, pg = every PostgreSQL process on the machine "
        "(other databases' work included), bench = the agents themselves; *web CPU ms/session* = web CPU time per "
        "complete session (robust to the machine's other load).",
        "",
        "| agents | sessions/s | p50 ms | p90 ms | p99 ms | max ms | session p50 ms | queue ms | errors "
        "| CPU web | CPU celery | CPU pg | CPU redis | CPU bench | web CPU ms/session |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cpu = r.cpu
        lines.append(
            f"| {r.agents} | {r.rate:.1f} | {r.percentile(50):.0f} | {r.percentile(90):.0f} | "
            f"{r.percentile(99):.0f} | {r.percentile(100):.0f} | {r.percentile(50, r.stats.session_times):.0f} | "
            f"{r.percentile(50, r.stats.queue_times):.0f} | {r.stats.errors} | {cpu.get('web', 0):.2f} | "
            f"{cpu.get('celery', 0) + cpu.get('beat', 0):.2f} | {cpu.get('postgres', 0):.2f} | "
            f"{cpu.get('redis', 0):.2f} | {cpu.get('bench', 0):.2f} | "
            f"{1000 * cpu.get('web', 0) * r.seconds / max(1, r.stats.sessions):.0f} |"
        )
    names = {
        1: "open session",
        2: "identify → open channel",
        3: "authenticate → registry",
        4: "registry → job script",
        5: "script + verify → done",
    }
    lines += [
        "",
        "Latency by exchange, p50 / p99 ms (what the server does on each: 1 creates the session and answers "
        "the identify batch; 2 identifies the card and starts the ISD channel; 3 verifies the card cryptogram "
        "and reads the registry; 4 computes and seals the job's script; 5 checks the script's responses, "
        "records the job done and closes the session):",
        "",
        "| agents | " + " | ".join(f"{n}: {names[n]}" for n in sorted(names)) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for r in results:
        cells = []
        for number in sorted(names):
            values = r.stats.by_exchange.get(number, [])
            cells.append(f"{r.percentile(50, values):.0f} / {r.percentile(99, values):.0f}" if values else "—")
        lines.append(f"| {r.agents} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_section(body: str, analysis: str = "") -> None:
    text = DOC.read_text()
    section = body + ("\n" + analysis.strip() + "\n" if analysis.strip() else "")
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        existing = pattern.search(text).group(0)
        # Keep the hand-written analysis after the generated table (from "### " on).
        keep = existing[existing.index("\n### ") :] if "\n### " in existing and not analysis else ""
        text = pattern.sub(lambda _m: section + keep + ("\n" if not keep.endswith("\n") else ""), text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,10,50,200", help="comma-separated agent counts (default 1,10,50,200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per agent count")
    parser.add_argument("--server", default="https://127.0.0.1:8000", help="base URL of make prod-local")
    parser.add_argument("--processes", type=int, default=0, help="agent processes (default: min(N, 4))")
    parser.add_argument("--cards-dir", type=Path, default=DEFAULT_CARDS_DIR, help="emulated cards and tokens")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between runs")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.agents.split(",") if n.strip()]
    if not counts or min(counts) < 1 or max(counts) > 2000 or not 1 <= args.seconds <= 3600:
        parser.error("agents 1..2000, seconds 1..3600")

    topology = Topology({"ECARD_CARDS_DIR": str(args.cards_dir)})
    env = dict(topology.env)
    tokens = ensure_cards(topology, args.cards_dir, max(counts))
    results: list[LoadResult] = []
    bench_pid = os.getpid()
    for n in counts:
        rows = read_tokens(tokens, n)
        processes = args.processes or default_processes(n)

        def groups() -> dict[str, list[int]]:
            found = server_groups(topology)
            from bench.loadkit import children

            found["bench"] = [bench_pid, *children(bench_pid)]
            return found

        result = run_load(
            rows=rows, env=env, base_url=args.server, seconds=args.seconds, processes=processes, groups=groups
        )
        results.append(result)
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in result.cpu.items())
        print(
            f"  N={n}: {result.stats.sessions} sessions in {args.seconds:g} s ({processes} agent processes); "
            f"exchange p50/p90/p99/max {result.percentile(50):.0f}/{result.percentile(90):.0f}/"
            f"{result.percentile(99):.0f}/{result.percentile(100):.0f} ms; queue p50 "
            f"{result.percentile(50, result.stats.queue_times):.0f} ms; CPU cores: {cpu}",
            flush=True,
        )
        for sample in result.stats.error_samples[:5]:
            print(f"    error: {sample}", flush=True)
        print(result.summary(), flush=True)
        if n != counts[-1]:
            time.sleep(args.pause)

    load = os.getloadavg()
    try:
        pressure = Path("/proc/pressure/cpu").read_text().split()[2].split("=")[1] + "%"
    except (OSError, IndexError):
        pressure = "n/a"
    web = env.get("WEB_CONCURRENCY", "?")
    threads = env.get("GUNICORN_THREADS", "1")
    header = (
        f"`python bench/bench_load.py --agents {args.agents} --seconds {args.seconds:g} --server {args.server}` "
        f"against `make prod-local` — nproc {os.cpu_count()}, {cpu_model()}, Python {platform.python_version()}, "
        f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, load average after the runs "
        f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}, CPU pressure (some, avg60) {pressure} (the machine is "
        f"shared with other work). Server: gunicorn "
        f"{web} workers x {threads} thread(s) ({'gthread' if threads != '1' else 'sync'}) with TLS, 2 Celery "
        f"workers + beat, PostgreSQL and Redis on the same 2 cores as the agents."
    )
    if not args.no_write:
        write_section(render(results, header))
    print(results[-1].summary())
    return 0 if all(r.stats.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
