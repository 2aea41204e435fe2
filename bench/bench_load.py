"""Load benchmark: N concurrent agents drive complete card sessions against ``make prod-local``.

    python bench/bench_load.py --agents 1,10,50,200 --seconds 20
    python bench/bench_load.py --server https://127.0.0.1:8440,https://127.0.0.1:8441 --verify

Each agent owns one emulated card (``seed_load`` creates the cards, with the load bank enrolled,
and their device tokens; this script runs it when the cards are missing) and loops: its card gets
a small job (lock, then unlock, ... of the bank's security domain, queued through
``cards.services`` the way a bank operator's request is), then the agent presents the card over
HTTP(S): identify, open a secure channel with the ISD, read the registry, run the job's script,
verify it with GET STATUS — five HTTP exchanges, one persistent connection per agent and server.
Agents run as threads in a few processes (``--processes``), their cards held in memory (no state
file written per command; written back at the end): the generator must stay cheap.

**Several servers.** ``--server`` takes several base URLs (default: every web group of prod-local,
``PROD_WEB_URLS``; ``PROD_WEB_GROUPS=2 make prod-local`` starts two gunicorn masters on two ports).
Every HTTP request goes to the next server in turn, so one session's exchanges are served by
different groups: no session affinity. ``--verify`` then checks the card population as the fault
test does: every card presented until nothing is pending, every job queued once and done once,
none reported done to two sessions, each card's lock state the platform's record, and the audit
log exported and verified offline.

**CPU per session, every tier.** From ``/proc/<pid>/stat`` (utime + stime) of process trees,
between the start and the end of the window: web = every group's gunicorn master and workers,
pg = the PostgreSQL backends connected to the platform's database (``pg_stat_activity``; the bench's
own feeder connections and other databases on the shared server excluded), celery = workers and
beat, redis = the redis-server process (shared with other users of that server), bench = the load
generator (agents and in-memory cards), feeders = its job feeders' threads (``time.thread_time``
inside the window; queueing a job through ``cards.services`` is a bank's request, not the card's).
*server CPU ms/session* = (web + pg + celery + redis) CPU time / complete sessions; it does not
depend on the machine's other load the way sessions/s does.

**Profile.** ``--profile DIR`` records the web workers with py-spy during the window of the last N
(``py-spy record --subprocesses --format speedscope`` on each group's master) and writes the top
frames into the "Load profile" section (``make profile-load``).

**Bank stages delegated** (``--delegated``, issue 17). The job per session is a key rotation of
the card's Load Bank D SSD instead: an SSD installed for SCP11 of a bank with its own key service
(``seed_load --delegated``; this script runs it when the cards lack that SSD), so the stage's
channel is opened, and its PUT KEY built and wrapped, by that service (``updates/delegation.py``):
the cost of delegation. The key versions cycle 0x31..0x3F and wrap back to 0x31
(``cards.services.next_kvn``). The key service processes (command line ``-m keyservice serve``,
in this topology's ``ECARD_KEYSERVICE_DIR``) are their own CPU tier, *keyservice*, counted in the
server's. ``--baseline 1,50`` then runs, at those N, on the same machine right after, the
non-delegated jobs of ``--baseline-jobs`` (default both): ``lock``, the "Load" section's job, and
``rotate-custody``, the same key rotation of the load bank's SSD whose keys the platform holds
(the same bank stage without the service: the cost of delegation itself). They are shown in the
same section. Before the first run of each rotation job the cards are settled outside any window:
SSDs the lock job left locked are unlocked (PUT KEY cannot select a locked SSD) and every card is
presented until nothing is pending. Writes the "Load, bank stages delegated" section (the
"Load" section is left as it is), with a line comparing its N = 50 figures to the Load section's.

Writes the "Load" section of docs/benchmarks.md (``--no-write`` to skip). The last line printed
is ``N agents: X sessions/s, p50 A ms, p99 B ms, E errors`` for the last N.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import benchdoc  # noqa: E402 - after the sys.path entry
from bench.loadkit import (  # noqa: E402
    BENCH_PG_APPNAME,
    LoadResult,
    Topology,
    children,
    drain,
    pg_backends,
    pids_named,
    pids_with_cmdline,
    read_tokens,
    run_load,
    split_urls,
    ssl_context,
    tree,
)

SECTION = "## Load"
DELEGATED_SECTION = "## Load, bank stages delegated"
DELEGATED_OPERATOR = "loadbank_d_op"  # demo/management/commands/seed_load.py
PROFILE_SECTION = "## Load profile"
# Card state files on tmpfs (seeding and write-back only: the agents keep the cards in memory).
SHM = Path("/dev/shm")  # noqa: S108 - a private per-user directory (0700) is made below it
# One directory per database (PROD_DB): the cards belong to the records of that database, and several
# checkouts may run prod-local on one machine with different databases.
_CARDS = f"ecard-load-cards-{os.getuid()}-{os.environ.get('PROD_DB', 'ecard_prod')}"
DEFAULT_CARDS_DIR = SHM / _CARDS if SHM.is_dir() else ROOT / "var" / _CARDS
SERVER_TIERS = ("web", "postgres", "celery", "redis")
DELEGATED_TIERS = (*SERVER_TIERS, "keyservice")
TARGETS = {"rate": 100.0, "p99": 250.0, "cpu": 15.0}


def ensure_cards(topology: Topology, cards_dir: Path, count: int, *, delegated: bool = False) -> Path:
    cards_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if cards_dir.stat().st_uid != os.getuid():
        raise SystemExit(f"{cards_dir} belongs to another user")
    tokens = cards_dir / "load-tokens.jsonl"
    try:
        rows = read_tokens(tokens, count)
        if all(Path(row["state_file"]).exists() and (not delegated or "delegated_sd_id" in row) for row in rows):
            return tokens
    except (OSError, RuntimeError, ValueError):
        pass
    print(f"seeding {count} load cards into {cards_dir} ...", flush=True)
    env = dict(os.environ)
    env.update(topology.overrides)
    env.update(ECARD_CARDS_DIR=str(cards_dir), LOG_LEVEL="WARNING")
    started = time.monotonic()
    tokens_arg = ["--tokens", str(tokens), *(["--delegated"] if delegated else [])]
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "prod_local.sh"), "manage", "seed_load", "--cards", str(count), *tokens_arg],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=3600,
    )
    print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)
    keyservice_dir = topology.env.get("ECARD_KEYSERVICE_DIR", str(ROOT / "var" / "keyservice"))
    if delegated and not pids_with_cmdline("-m keyservice serve", f"{keyservice_dir}/loadbank-d"):
        # The seed ran Load Bank D's service for its own duration; prod-local starts it from now on.
        topology.start()
        print("started Load Bank D's key service (scripts/prod_local.sh start)", flush=True)
    return tokens


def process_groups(topology: Topology, bench_pid: int) -> Callable[[], dict[str, list[int]]]:
    database_url = topology.env.get("DATABASE_URL", "")
    keyservice_dir = topology.env.get("ECARD_KEYSERVICE_DIR", str(ROOT / "var" / "keyservice"))

    def groups() -> dict[str, list[int]]:
        found = topology.process_groups()
        found["celery"] = found.get("celery", []) + found.pop("beat", [])
        found["postgres"] = pg_backends(database_url) if database_url.startswith("postgres") else []
        found["redis"] = pids_named(["redis-server"])
        # The banks' key services of this topology (prod-local runs one per directory there).
        found["keyservice"] = pids_with_cmdline("-m keyservice serve", keyservice_dir)
        # The generator: this process and its agent processes (not py-spy, which it may have started).
        spies = set(pids_named(["py-spy"]))
        found["bench"] = [pid for pid in tree(bench_pid) if pid not in spies]
        return found

    return groups


def vacuum(database_url: str) -> None:
    """``VACUUM (ANALYZE)`` the platform's database before a window: every session updates its
    session, job and audit rows a few times, and a PostgreSQL without autovacuum (this machine's
    runs with it off) would measure the bloat of earlier runs (the audit log's pending-entry index
    scanned through dead entries: PostgreSQL's CPU per session grew from 4 to 7 ms over a few runs).
    Production keeps autovacuum on (docs/deploy.md)."""
    if not database_url.startswith("postgres"):
        return
    import psycopg

    try:
        with psycopg.connect(database_url, application_name=BENCH_PG_APPNAME, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
    except psycopg.Error as exc:
        print(f"    vacuum: {exc}", flush=True)


def default_processes(agents: int) -> int:
    return 1 if agents <= 1 else min(agents, 4)


def ms_per_session(r: LoadResult, tier: str) -> float:
    """CPU ms of a tier per session's worth of work served in the window (requests / exchanges per session)."""
    return 1000 * r.cpu.get(tier, 0.0) * r.seconds / max(1.0, r.session_equivalents)


def server_ms(r: LoadResult, tiers: tuple[str, ...] = SERVER_TIERS) -> float:
    return sum(ms_per_session(r, tier) for tier in tiers)


def render(results: list[LoadResult], header: str, urls: list[str], verification: str) -> str:
    groups = len(urls)
    spread = f"Every HTTP request went to the next of the {groups} web groups in turn (no affinity). "
    spread = spread if groups > 1 else ""
    lines = [
        header,
        "",
        "A *session* is one complete card presentation over HTTPS with one small job: identify the card, open "
        "an SCP03 secure channel with the ISD (INITIALIZE UPDATE, EXTERNAL AUTHENTICATE), read the registry, "
        "lock or unlock the load bank's security domain (SET STATUS) and verify it with GET STATUS — 3 HTTP "
        "exchanges (session open included; 5 before the sans-I/O engine), the job queued before the session through "
        "`cards.services` (not in the exchange latencies). Each N first runs a few seconds of load outside the "
        "window (the ramp: the window sees the steady state), after a `VACUUM (ANALYZE)` of the platform's "
        "database (this machine's PostgreSQL runs without autovacuum); *p50/p99* are over every HTTP exchange "
        "answered in the window (the table by exchange: of the sessions that ended in it). "
        f"{spread}"
        "*CPU ms/session* is CPU time (utime + stime from /proc) during the window divided by the sessions' worth "
        "of work answered in it (HTTP requests answered in the window / HTTP exchanges per session, so that "
        "sessions cut by the window's edges count for what was done of them; *req/s* is that request rate): "
        "*server* = web (gunicorn masters and workers) + pg (backends of the platform's database) + "
        "celery (workers and beat) + redis; *generator* = the load generator itself (agents and in-memory cards); "
        "*job queueing* = its job feeders' threads, which queue each session's job through `cards.services` as a "
        "bank operator's request would (their PostgreSQL backends are in no column). All of them share the two "
        "cores. Target: ≥ 100 sessions/s, p99 < 250 ms, 0 errors, server ≤ 15 ms/session.",
        "",
        "| agents | sessions/s | req/s | p50 ms | p99 ms | max ms | errors | server CPU ms/session | web | pg | celery "
        "| redis | generator CPU ms/session | job queueing CPU ms/session | requests per group |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.agents} | {r.rate:.1f} | {r.stats.window_requests / r.seconds:.0f} | {r.percentile(50):.0f} | "
            f"{r.percentile(99):.0f} | "
            f"{r.percentile(100):.0f} | {r.stats.errors} | **{server_ms(r):.0f}** | "
            + " | ".join(f"{ms_per_session(r, tier):.0f}" for tier in SERVER_TIERS)
            + f" | {ms_per_session(r, 'bench'):.0f} | {ms_per_session(r, 'feeders'):.0f}"
            + f" | {' / '.join(str(n) for n in r.stats.requests_by_server)} |"
        )
    # The exchanges of a single-stage job since the sans-I/O engine (docs/relay.md): a fourth or fifth
    # shows only when a listing disproves the expected registry or the card refuses midway.
    names = [
        "open session: identify + SELECT + INITIALIZE UPDATE",
        "authenticate + listing + script + verifying listing",
        "verified → done",
        "re-scripted after a mismatch",
        "a reopened stage",
    ]
    lines += [
        "",
        "Latency by exchange, p50 / p99 ms:",
        "",
        "| agents | " + " | ".join(f"{n}: {name}" for n, name in enumerate(names, start=1)) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for r in results:
        cells = []
        for number in range(1, len(names) + 1):
            values = r.stats.by_exchange.get(number, [])
            cells.append(f"{r.percentile(50, values):.0f} / {r.percentile(99, values):.0f}" if values else "—")
        lines.append(f"| {r.agents} | " + " | ".join(cells) + " |")
    lines += ["", *verdict(results)]
    if verification:
        lines += ["", verification]
    return "\n".join(lines) + "\n"


def verdict(results: list[LoadResult]) -> list[str]:
    at = {r.agents: r for r in results}
    r = at.get(50) or results[-1]
    best = max(results, key=lambda x: x.rate)
    cpu = min(server_ms(x) for x in results if x.stats.sessions) if any(x.stats.sessions for x in results) else 0.0

    def judge(ok: bool, factor: float) -> str:
        return "**met**" if ok else f"**missed** ({factor:.1f}×)"

    return [
        f"Against the targets (N = {r.agents}):",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| ≥ 100 complete sessions/s | {r.rate:.1f} (best {best.rate:.1f} at N = {best.agents}) | "
        f"{judge(r.rate >= TARGETS['rate'], TARGETS['rate'] / max(r.rate, 0.01))} |",
        f"| p99 exchange < 250 ms | {r.percentile(99):.0f} ms | "
        f"{judge(r.percentile(99) < TARGETS['p99'], r.percentile(99) / TARGETS['p99'])} |",
        f"| 0 errors | {sum(x.stats.errors for x in results)} over all N | "
        f"{'**met**' if all(x.stats.errors == 0 for x in results) else '**missed**'} |",
        f"| server CPU ≤ 15 ms/session, all tiers | {server_ms(r):.0f} ms (lowest over N: {cpu:.0f}) | "
        f"{judge(server_ms(r) <= TARGETS['cpu'], server_ms(r) / TARGETS['cpu'])} |",
    ]


def load_section_figures(doc: str, agents: int = 50) -> tuple[float, float] | None:
    """(sessions/s, server CPU ms/session) of the "Load" section's row for ``agents``, if it has one."""
    match = re.search(r"^## Load\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    if match is None:
        return None
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 7 and cells[0] == str(agents):
            try:
                return float(cells[1]), float(cells[7].strip("*"))
            except ValueError:
                return None
    return None


BASELINE_LABELS = {
    "lock": "*not delegated: lock/unlock (ISD stage)*",
    "rotate-custody": "*not delegated: key rotation, platform custody*",
}


def render_delegated(results: list[LoadResult], baseline: list[tuple[str, LoadResult]], header: str) -> str:
    """The "Load, bank stages delegated" section: the delegated runs, any same-machine baseline runs,
    and a line against the "Load" section's N = 50."""
    lines = [
        header,
        "",
        "The same load as the \"Load\" section, but each session's job is a bank stage delegated to the bank's "
        "own key service (issue 17): a key rotation of the card's Load Bank D SSD (installed for SCP11, keyed by "
        "Load Bank D's service; `seed_load --delegated`), queued through `cards.services.request_key_rotation` "
        "(key versions 0x31..0x3F, then back to 0x31). The platform opens the session with the card, then the "
        "service opens the SCP03 channel with the SSD (EXTERNAL AUTHENTICATE) and builds and wraps PUT KEY "
        "under the session DEK, and unwraps the card's answers (`updates/delegation.py`; mutual TLS to the "
        'service, kept-alive connections). Columns as in "Load"; *keyservice* = the key service process(es) '
        "(`python -m keyservice serve`, SoftHSM2 token), counted in *server*. Rows marked *not delegated* "
        "ran right after, on the same machine and servers: the Load section's job (lock/unlock of the load "
        "bank's SSD, an ISD stage), and the same key rotation in the load bank's SSD, whose keys the platform "
        "holds (custody: its new key set made by a Celery task before the session, PUT KEY built by the "
        "engine) — the same bank stage without the service.",
        "",
        "| job | agents | sessions/s | req/s | exchanges/session | p50 ms | p99 ms | max ms | errors "
        "| server CPU ms/session | web | pg | celery | redis | keyservice | generator CPU ms/session "
        "| job queueing CPU ms/session |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("key rotation, delegated", x) for x in results] + [(BASELINE_LABELS[j], x) for j, x in baseline]
    for job, r in rows:
        lines.append(
            f"| {job} | {r.agents} | {r.rate:.1f} | {r.stats.window_requests / r.seconds:.0f} | "
            f"{r.exchanges_per_session:.1f} | {r.percentile(50):.0f} | {r.percentile(99):.0f} | "
            f"{r.percentile(100):.0f} | {r.stats.errors} | **{server_ms(r, DELEGATED_TIERS):.0f}** | "
            + " | ".join(f"{ms_per_session(r, tier):.0f}" for tier in DELEGATED_TIERS)
            + f" | {ms_per_session(r, 'bench'):.0f} | {ms_per_session(r, 'feeders'):.0f} |"
        )
    lines += ["", "Latency by exchange (delegated), p50 / p99 ms:", ""]
    width = max([len(r.stats.by_exchange) for r in results] + [1])
    lines += [
        "| agents | " + " | ".join(f"exchange {n}" for n in range(1, width + 1)) + " |",
        "|---:|" + "---:|" * width,
    ]
    for r in results:
        cells = []
        for number in range(1, width + 1):
            values = r.stats.by_exchange.get(number, [])
            cells.append(f"{r.percentile(50, values):.0f} / {r.percentile(99, values):.0f}" if values else "—")
        lines.append(f"| {r.agents} | " + " | ".join(cells) + " |")
    lines += ["", *comparison(results, baseline)]
    return "\n".join(lines) + "\n"


def comparison(results: list[LoadResult], baseline: list[tuple[str, LoadResult]]) -> list[str]:
    """The cost of delegation in a line or two: N = 50 (or the last N) against the Load section's
    figure, and against the same-machine baseline at the same N if there is one."""
    at = {r.agents: r for r in results}
    r = at.get(50) or results[-1]
    keyservice = ms_per_session(r, "keyservice")
    said = (
        f"**Cost of delegation** (N = {r.agents}): {r.rate:.1f} sessions/s, server CPU "
        f"{server_ms(r, DELEGATED_TIERS):.0f} ms/session of which the key service {keyservice:.0f}"
    )
    out = []
    loaded = load_section_figures(benchdoc.DOC.read_text() if benchdoc.DOC.exists() else "", r.agents)
    if loaded is not None:
        rate, cpu = loaded
        out.append(
            f"{said}; the \"Load\" section's N = {r.agents} (the engine issue's figure, its own run): {rate:.1f} "
            f"sessions/s, {cpu:.0f} ms/session — {r.rate / rate if rate else 0:.2f}× the rate, "
            f"{server_ms(r, DELEGATED_TIERS) - cpu:+.0f} ms/session."
        )
    for job, same in baseline:
        if same.agents != r.agents:
            continue
        out.append(
            f"{'Same machine, right after' if out else said + '; same machine, right after'} "
            f"({BASELINE_LABELS[job].strip('*')}, N = {same.agents}): {same.rate:.1f} sessions/s, "
            f"{server_ms(same, DELEGATED_TIERS):.0f} ms/session — delegated is "
            f"{r.rate / same.rate if same.rate else 0:.2f}× the rate, "
            f"{server_ms(r, DELEGATED_TIERS) - server_ms(same, DELEGATED_TIERS):+.0f} ms/session."
        )
    if not out:
        out.append(said + ' (no "Load" figure to compare with).')
    paragraphs = out[:1]
    for line in out[1:]:
        paragraphs += ["", line]
    return paragraphs


def prepare_rotations(topology: Topology, rows: list[dict[str, Any]], urls: list[str]) -> None:
    """Unlock the load bank's SSDs the lock job left locked, and present the cards until nothing is
    pending (outside any window), so that the rotations' sessions are rotations only."""
    code = f"from bench.loadkit import unlock_sds; unlock_sds({[row['sd_id'] for row in rows]!r})"
    run = topology.manage("shell", "-c", code)
    if run.returncode != 0:
        raise SystemExit(f"unlock_sds failed: {run.stderr[-500:]}")
    drained = drain(rows, urls, ssl_context(topology.env))
    print(f"  before the rotations: {run.stdout.strip().splitlines()[-1]}, cards drained, {drained['left']} left")


# ---------------------------------------------------------------------------------------------
# verification (same checks as tests/ops/test_fault.py)


def verify_population(
    topology: Topology, tokens: Path, rows: list[dict[str, Any]], urls: list[str], seen_done: list[int]
) -> tuple[bool, str]:
    """Drain every card, then check jobs, card states and the audit log. (ok, one-paragraph report)."""
    drained = drain(rows, urls, ssl_context(topology.env))
    problems: list[str] = []
    if drained["left"] or drained["errors"]:
        problems.append(f"drain left {drained['left']} errors {drained['errors'][:3]}")
    seen = seen_done + drained["done_jobs"]
    if len(seen) != len(set(seen)):
        problems.append("a job was reported done to two sessions")
    subset = topology.env.get("ECARD_VAR_DIR", str(ROOT / "var")) + "/verify-tokens.jsonl"
    Path(subset).write_text("".join(json.dumps(row) + "\n" for row in rows))
    code = f"from bench.loadkit import fault_report; fault_report({subset!r})"
    run = topology.manage("shell", "-c", code)
    if run.returncode != 0:
        return False, f"fault_report failed: {run.stderr[-500:]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    jobs = done = 0
    for card in report["cards"]:
        jobs += len(card["jobs"])
        done += sum(1 for j in card["jobs"] if j["state"] == "done")
        if card["open"] or card["failed"]:
            problems.append(f"{card['cin']}: open {card['open']} failed {card['failed']}")
        if any(n != 1 for n in card["queued_entries"].values()) or any(n != 1 for n in card["done_entries"].values()):
            problems.append(f"{card['cin']}: a job not queued once and done once in the audit log")
        if card["record_locked"] != card["card_locked"]:
            problems.append(f"{card['cin']}: card and record disagree on the lock state")
    export = Path(topology.env.get("ECARD_VAR_DIR", str(ROOT / "var"))) / "verify-audit.jsonl"
    exported = topology.manage("audit_export", str(export))
    verified = subprocess.run(
        [sys.executable, "-m", "audit.verify", str(export)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if exported.returncode != 0 or verified.returncode != 0:
        problems.append(f"audit log does not verify: {(verified.stdout + verified.stderr).strip()[-300:]}")
    ok = not problems
    text = (
        f"**Verification** (`--verify`, {len(urls)} web group(s)): {len(rows)} cards drained "
        f"({drained['presentations']} presentations), {done} of {jobs} jobs done and none open or failed, "
        f"every job queued once and done once in the audit log, {len(set(seen))} jobs reported done and none "
        f"twice, every card's lock state the platform's record, audit log of {report['audit_size']} entries "
        f"exported and verified offline: {'**all checks pass**' if ok else '**FAILED**: ' + '; '.join(problems[:5])}."
    )
    return ok, text


# ---------------------------------------------------------------------------------------------
# profile (py-spy)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def start_profile(topology: Topology, out_dir: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    exe = py_spy()
    if exe is None:
        raise SystemExit("py-spy is not installed (pip install -r requirements-dev.txt)")
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, master in enumerate(topology.web_masters(), start=1):
        cmd = [exe, "record", "--pid", str(master), "--subprocesses", "--gil", "--rate", "100", "--nonblocking"]
        cmd += ["--duration", str(max(1, int(seconds))), "--format", "speedscope"]
        cmd += ["--output", str(out_dir / f"web{i}.speedscope.json")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


PROJECT_PACKAGES = ("ecard/", "issuers/", "cards/", "updates/", "audit/", "portal/", "gp/", "cardsim/")
# Where a sample's own time goes, by the file of its innermost frame (first match wins).
CATEGORIES = (
    ("PostgreSQL client (psycopg, libpq calls)", ("psycopg/",)),
    ("Django ORM (query building, compiling, model instances)", ("django/db/",)),
    ("Redis client", ("redis/",)),
    ("DRF (request parsing, serializers, views)", ("rest_framework/",)),
    ("Django request handling, middleware, settings, signals", ("django/",)),
    ("gunicorn, TLS, sockets", ("gunicorn/", "ssl.py", "socket.py", "selectors.py")),
    ("cryptography (C and Python)", ("cryptography/", "gp/crypto", "gp/scp")),
    ("project code (the engine, services, custody, audit)", PROJECT_PACKAGES),
    ("logging, JSON", ("logging/", "json/")),
)


def _short(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/")[-1]
    if "/lib/python3" in file:
        return "stdlib/" + file.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return file.replace(str(ROOT) + "/", "")


def summarise_profiles(paths: list[Path]) -> dict[str, Any]:
    """Samples, and per frame (``function (file)``) its inclusive and self share; self share by category."""
    inclusive: dict[str, float] = {}
    own: dict[str, float] = {}
    categories: dict[str, float] = {}
    total = 0.0
    samples = 0
    for path in paths:
        doc = json.loads(path.read_text())
        frames = [
            (f"{frame['name']} ({_short(frame.get('file', ''))})", _short(frame.get("file", "")))
            for frame in doc["shared"]["frames"]
        ]
        for profile in doc["profiles"]:
            for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
                total += weight
                samples += 1
                for name in {frames[i][0] for i in sample}:
                    inclusive[name] = inclusive.get(name, 0.0) + weight
                if sample:
                    leaf, file = frames[sample[-1]]
                    own[leaf] = own.get(leaf, 0.0) + weight
                    category = next((c for c, marks in CATEGORIES if any(m in file for m in marks)), "other")
                    categories[category] = categories.get(category, 0.0) + weight
    share = {name: 100 * value / max(total, 1e-9) for name, value in inclusive.items()}
    return {
        "samples": samples,
        "inclusive": share,
        "self": {name: 100 * value / max(total, 1e-9) for name, value in own.items()},
        "categories": {name: 100 * value / max(total, 1e-9) for name, value in categories.items()},
    }


def profile_section(result: LoadResult, paths: list[Path], note: str) -> str:
    summary = summarise_profiles(paths)
    inclusive, own = summary["inclusive"], summary["self"]
    project = [n for n in inclusive if any(f"({p}" in n for p in PROJECT_PACKAGES)]
    project.sort(key=lambda n: -inclusive[n])
    lines = [
        note,
        "",
        f"py-spy (`make profile-load`: `py-spy record --gil --subprocesses --rate 100 --format speedscope` on every "
        f"web group's master) during the N = {result.agents} window: {result.summary()}, server CPU "
        f"{server_ms(result):.0f} ms/session (web {ms_per_session(result, 'web'):.0f}). {summary['samples']} samples "
        "of the thread holding the GIL in each web worker, so this is where the web tier's Python CPU goes (time "
        "waiting for PostgreSQL or the network, GIL released, is not in it; the table above has the tiers). "
        f"Speedscope files in `{paths[0].parent}/` (https://www.speedscope.app).",
        "",
        "Self time by kind of code (innermost frame's file):",
        "",
        "| share | kind |",
        "|---:|---|",
        *[f"| {v:.1f}% | {k} |" for k, v in sorted(summary["categories"].items(), key=lambda kv: -kv[1])],
        "",
        "The project's frames, inclusive (the frame and everything it calls), top 25:",
        "",
        "| inclusive | self | frame |",
        "|---:|---:|---|",
        *[f"| {inclusive[n]:.1f}% | {own.get(n, 0.0):.1f}% | `{n}` |" for n in project[:25]],
        "",
        "Self time, any frame, top 15:",
        "",
        "| self | frame |",
        "|---:|---|",
        *[f"| {v:.1f}% | `{n}` |" for n, v in sorted(own.items(), key=lambda kv: -kv[1])[:15]],
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--agents", default="1,10,50,200", help="comma-separated agent counts (default 1,10,50,200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per agent count")
    parser.add_argument("--server", default="", help="base URL(s), comma-separated (default: every prod-local group)")
    parser.add_argument("--processes", type=int, default=0, help="agent processes (default: min(N, 4))")
    parser.add_argument("--cards-dir", type=Path, default=DEFAULT_CARDS_DIR, help="emulated cards and tokens")
    parser.add_argument("--file-cards", action="store_true", help="write card state files per command (fsync)")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between runs")
    parser.add_argument(
        "--ramp", type=float, default=-1, help="seconds of load before each window (default: min(5, N/20 + 1))"
    )
    parser.add_argument("--verify", action="store_true", help="afterwards, drain the cards and check jobs and log")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the web workers (last N) into DIR")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument(
        "--delegated", action="store_true", help="each session's job: a key rotation of Load Bank D's SSD (delegated)"
    )
    parser.add_argument(
        "--baseline", default="", help="with --delegated: afterwards, the non-delegated jobs at these N (e.g. 1,50)"
    )
    parser.add_argument(
        "--baseline-jobs",
        default="lock,rotate-custody",
        help="the non-delegated jobs of --baseline (lock, rotate-custody)",
    )
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.agents.split(",") if n.strip()]
    baseline = [int(n) for n in args.baseline.split(",") if n.strip()]
    if not counts or min(counts) < 1 or max(counts + baseline) > 2000 or not 1 <= args.seconds <= 3600:
        parser.error("agents 1..2000, seconds 1..3600")
    if args.delegated and (args.verify or args.profile is not None):
        parser.error("--verify and --profile check and profile the lock job: not with --delegated")
    if baseline and (not args.delegated or min(baseline) < 1):
        parser.error("--baseline N,... goes with --delegated")
    baseline_jobs = [j.strip() for j in args.baseline_jobs.split(",") if j.strip()]
    if not set(baseline_jobs) <= set(BASELINE_LABELS):
        parser.error(f"--baseline-jobs: of {', '.join(BASELINE_LABELS)}")
    tiers = DELEGATED_TIERS if args.delegated else SERVER_TIERS

    topology = Topology({"ECARD_CARDS_DIR": str(args.cards_dir)})
    urls = split_urls(args.server) if args.server else topology.base_urls
    env = dict(topology.env)
    env["PGAPPNAME"] = BENCH_PG_APPNAME
    tokens = ensure_cards(topology, args.cards_dir, max(counts + baseline), delegated=args.delegated)
    groups = process_groups(topology, os.getpid())
    results: list[LoadResult] = []
    seen_done: list[int] = []
    profile_paths: list[Path] = []
    print(f"servers: {', '.join(urls)}", flush=True)
    baseline_results: list[tuple[str, LoadResult]] = []
    runs = [(n, "rotate" if args.delegated else "lock") for n in counts]
    runs += [(n, job) for job in baseline_jobs for n in baseline]
    prepared: set[str] = set()
    for index, (n, job) in enumerate(runs):
        if index >= len(counts):
            print(f"baseline (not delegated): {job}", flush=True)
        if job in ("rotate", "rotate-custody") and job not in prepared:
            # The lock job leaves about half the load bank's SSDs locked, where PUT KEY cannot select
            # them, and an earlier run may have left jobs open: settled first, outside any window.
            prepare_rotations(topology, read_tokens(tokens, max(counts) if job == "rotate" else max(baseline)), urls)
            prepared.add(job)
        rows = read_tokens(tokens, n)
        processes = args.processes or default_processes(n)
        vacuum(env.get("DATABASE_URL", ""))
        spies: list[subprocess.Popen[bytes]] = []
        during = None
        if args.profile is not None and n == counts[-1]:

            def during(t: float, _box: list[list[subprocess.Popen[bytes]]] = [spies]) -> None:  # noqa: B006
                if not _box[0]:
                    _box[0].extend(start_profile(topology, args.profile, args.seconds - t - 0.5))

        result = run_load(
            rows=rows,
            env=env,
            base_url=urls,
            seconds=args.seconds,
            processes=processes,
            groups=groups,
            during=during,
            memory_cards=not args.file_cards,
            ramp=args.ramp if args.ramp >= 0 else min(5.0, n / 20 + 1),
            job=job,
            operator=DELEGATED_OPERATOR if job == "rotate" else "loadbank_op",
        )
        for spy in spies:
            try:
                _out, err = spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                continue
            if spy.returncode != 0:
                print(f"    py-spy: {err.decode(errors='replace')[-300:]}", flush=True)
        if spies and args.profile is not None:
            profile_paths = sorted(p for p in args.profile.glob("web*.speedscope.json") if p.stat().st_size)
        if index < len(counts):
            results.append(result)
        else:
            baseline_results.append((job, result))
        seen_done += result.stats.done_jobs
        cpu = ", ".join(f"{k} {ms_per_session(result, k):.0f}" for k in (*tiers, "bench", "feeders"))
        print(
            f"  N={n}: {result.stats.sessions} sessions in {args.seconds:g} s ({processes} agent processes); "
            f"exchange p50/p99/max {result.percentile(50):.0f}/{result.percentile(99):.0f}/"
            f"{result.percentile(100):.0f} ms; {result.stats.window_requests / args.seconds:.0f} req/s; "
            f"CPU ms/session: server {server_ms(result, tiers):.0f} ({cpu}); "
            f"requests per group {result.stats.requests_by_server}",
            flush=True,
        )
        for sample in result.stats.error_samples[:5]:
            print(f"    error: {sample}", flush=True)
        print(result.summary(), flush=True)
        if index != len(runs) - 1:
            time.sleep(args.pause)

    verification, verified = "", True
    if args.verify:
        verified, verification = verify_population(topology, tokens, read_tokens(tokens, max(counts)), urls, seen_done)
        print(verification, flush=True)

    # the worker processes each group's master runs (the environment's WEB_CONCURRENCY is per group)
    web = " + ".join(str(len(children(master))) for master in topology.web_masters()) or "?"
    threads = env.get("GUNICORN_THREADS", "1")
    note = benchdoc.machine_note(f"{len(urls)} web group(s)")
    try:
        pressure = Path("/proc/pressure/cpu").read_text().split()[2].split("=")[1] + "%"
    except (OSError, IndexError):
        pressure = "n/a"
    header = (
        f"`python bench/bench_load.py --agents {args.agents} --seconds {args.seconds:g} --server {','.join(urls)}` "
        f"against `make prod-local` — {note}, CPU pressure (some, avg60) {pressure} (the machine is shared with "
        f"other work). Server: {len(urls)} group(s) of gunicorn, {web} worker(s) x {threads} thread(s), with TLS, "
        f"Celery workers + beat, PostgreSQL and Redis on the same cores as the load generator; cards "
        f"{'in state files' if args.file_cards else 'in memory'}."
    )
    if args.delegated:
        header = header.replace("--seconds", "--delegated --seconds", 1)
        if baseline:
            header = header.replace(
                "` against", f" --baseline {args.baseline} --baseline-jobs {','.join(baseline_jobs)}` against", 1
            )
        if not args.no_write:
            benchdoc.write_section(DELEGATED_SECTION, render_delegated(results, baseline_results, header))
    elif not args.no_write:
        if args.profile is None:  # a profiling run writes its own section only
            benchdoc.write_section(SECTION, render(results, header, urls, verification))
        if profile_paths:
            benchdoc.write_section(PROFILE_SECTION, profile_section(results[-1], profile_paths, note))
    print(results[-1].summary())
    everything = results + [r for _job, r in baseline_results]
    return 0 if verified and all(r.stats.errors == 0 for r in everything) else 1


if __name__ == "__main__":
    sys.exit(main())
