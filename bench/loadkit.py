"""Load-test kit shared by ``bench/bench_load.py`` and ``tests/ops/test_fault.py``.

* :func:`topology_env` — the production environment of ``scripts/prod_local.sh`` (one source of
  truth: the script prints it), with overrides for a private topology (port, database, Redis dbs).
* :class:`Topology` — start/stop that topology through the script; PIDs of the web master and its
  workers, the Celery workers and beat.
* :class:`KeepAliveRelay` — the relay API over one persistent HTTP(S) connection per agent and server
  (what a phone or ATM keeps open), timing every exchange; given several servers (web groups) it sends
  each request to the next one in turn, so the exchanges of one session land on different groups.
* :class:`MemoryCard` — an emulated card held in memory across sessions (no state file written per
  command, no fsync): the generator's own cost stays small; written back once at the end.
* :func:`run_load` — N simulated agents in a few processes, many threads each; every agent owns one
  emulated card (``cardsim.transport.InProcessCard``) and loops: make sure its card has a small job
  (lock or unlock of the load bank's security domain, queued through ``cards.services`` by one
  feeder thread per process), present the card (identify, authenticate, run the job, verify with
  GET STATUS), check the outcome. Bounded: every agent stops at the deadline.
* :class:`CpuMeter` — CPU seconds of process groups (whole process trees) from ``/proc``;
  :func:`pg_backends` — the PostgreSQL backends serving one database, the bench's own excluded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.core import RelayError, run_session  # noqa: E402 - after the sys.path entry
from cardsim import store  # noqa: E402
from cardsim.card import Card  # noqa: E402
from cardsim.transport import InProcessCard  # noqa: E402

SCRIPT = ROOT / "scripts" / "prod_local.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# libpq's application_name for the bench's own database connections (the job feeders), so that
# pg_backends() can tell them from the platform's.
BENCH_PG_APPNAME = "ecard-bench"


# ---------------------------------------------------------------------------------------------
# environment and topology


def topology_env(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``scripts/prod_local.sh`` runs the platform with (secrets included)."""
    env = dict(os.environ)
    env.update(overrides or {})
    out = subprocess.run(
        ["bash", str(SCRIPT), "env-json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _parents() -> dict[int, int]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        found[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc)."""
    return [child for child, parent in _parents().items() if parent == pid]


def tree(pid: int) -> list[int]:
    """A process and all its descendants (from /proc)."""
    parents = _parents()
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


@dataclass
class Topology:
    """A production topology started by ``scripts/prod_local.sh`` with the given overrides."""

    overrides: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = topology_env(self.overrides)
        self.run_dir = Path(self.env["ECARD_VAR_DIR"]) / "run"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.env.get("GUNICORN_CERTFILE") else "http"
        return f"{scheme}://{self.env['GUNICORN_BIND']}"

    def script(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(self.overrides)
        return subprocess.run(
            ["bash", str(SCRIPT), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> None:
        result = self.script("start")
        if result.returncode != 0:
            raise RuntimeError(f"topology did not start:\n{result.stdout}\n{result.stderr}")

    def stop(self) -> None:
        self.script("stop", timeout=120)

    def manage(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.script("manage", *args, timeout=timeout)

    def pid(self, name: str) -> int | None:
        return read_pid(self.run_dir / f"{name}.pid")

    def web_workers(self) -> list[int]:
        master = self.pid("web")
        return children(master) if master else []

    def web_masters(self) -> list[int]:
        """The gunicorn master of every web group (``web.pid``, ``web2.pid``, ...)."""
        pids = [read_pid(path) for path in sorted(self.run_dir.glob("web*.pid"))]
        return [pid for pid in pids if pid]

    @property
    def base_urls(self) -> list[str]:
        """Every web group's base URL (``PROD_WEB_URLS``), the first group's alone if unset."""
        urls = [url for url in self.env.get("PROD_WEB_URLS", "").split(",") if url.strip()]
        return urls or [self.base_url]

    def process_groups(self) -> dict[str, list[int]]:
        """Process trees by tier: every web group's master and workers, the Celery workers, beat."""
        groups: dict[str, list[int]] = {"web": [], "celery": [], "beat": []}
        for master in self.web_masters():
            groups["web"] += tree(master)
        for pidfile in sorted(self.run_dir.glob("worker*.pid")):
            pid = read_pid(pidfile)
            if pid:
                groups["celery"] += tree(pid)
        beat = self.pid("beat")
        if beat:
            groups["beat"] = tree(beat)
        return groups


def ssl_context(env: dict[str, str]) -> ssl.SSLContext | None:
    cert = env.get("GUNICORN_CERTFILE") or env.get("SSL_CERT_FILE")
    if not cert or not Path(cert).exists():
        return None
    return ssl.create_default_context(cafile=cert)


# ---------------------------------------------------------------------------------------------
# CPU from /proc


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11], [12] = utime, stime (fields 14, 15 of stat(5), counted after the comm field)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pids_named(names: Iterable[str]) -> list[int]:
    wanted = set(names)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm in wanted or comm.split(":")[0] in wanted:
                found.append(int(entry))
    return found


def pids_with_cmdline(*parts: str) -> list[int]:
    """PIDs whose command line (arguments joined by spaces) contains every one of ``parts``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(part in cmdline for part in parts):
                found.append(int(entry))
    return found


def pg_backends(database_url: str, *, exclude_application: str = BENCH_PG_APPNAME) -> list[int]:
    """PIDs of the PostgreSQL backends connected to the database of ``database_url`` (the platform's
    web threads, Celery workers and beat), without the bench's own connections and this query's.
    Other databases on the same server (other users of a shared machine) are left out."""
    import psycopg

    try:
        with psycopg.connect(database_url, application_name="ecard-bench-meter", connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND coalesce(application_name, '') <> %s",
                (exclude_application,),
            ).fetchall()
    except psycopg.Error:
        return []
    return [int(row[0]) for row in rows]


class CpuMeter:
    """CPU seconds used by process groups between :meth:`start` and :meth:`stop`."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: {pid: proc_cpu_seconds(pid) for pid in pids} for name, pids in self.groups().items()}

    def start(self) -> None:
        self.before = self._sample()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        self.wall = time.monotonic() - self._t0
        # A process that appears mid-run (a respawned worker) counts from zero.
        self.used = {
            name: sum(max(0.0, cpu - self.before.get(name, {}).get(pid, 0.0)) for pid, cpu in pids.items())
            for name, pids in after.items()
        }
        return self.used

    def cores(self) -> dict[str, float]:
        return {name: used / self.wall for name, used in self.used.items()} if self.wall else {}


# ---------------------------------------------------------------------------------------------
# the relay client


class ExchangeError(RelayError):
    """An HTTP exchange failed (status, connection, protocol)."""


def split_urls(base_url: str | Iterable[str]) -> list[str]:
    """``"https://a,https://b"`` or a list of URLs -> the list (at least one)."""
    urls = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [url.strip() for url in urls if url.strip()]
    if not urls:
        raise ValueError("no server URL")
    return urls


class _Endpoint:
    """One server (web group) and the persistent connection to it."""

    def __init__(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or (443 if self.https else 80)
        self.conn: http.client.HTTPConnection | None = None
        self.last_used = 0.0
        self.requests = 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class KeepAliveRelay:
    """``agent.core.Server`` over one persistent connection per server; latencies (s) of every exchange.

    With several servers (``"https://h:8440,https://h:8441"``: separate web groups on one database)
    every request goes to the next server in turn: no session affinity, the exchanges of one session
    are served by different groups. ``requests_by_server`` counts what each received."""

    def __init__(
        self,
        base_url: str | Iterable[str],
        token: str,
        *,
        context: ssl.SSLContext | None,
        timeout: float = 30.0,
        idle_limit: float = 3.0,
        start: int = 0,
    ) -> None:
        self.endpoints = [_Endpoint(url) for url in split_urls(base_url)]
        self.next = start
        self.context = context
        self.timeout = timeout
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Agent {token}",
            "User-Agent": "ecard-bench-load/1",
        }
        self.latencies: list[float] = []
        self.idle_limit = idle_limit
        # Requests answered inside this wall-clock window (the load's measurement window), whatever
        # became of their session: a rate that does not depend on sessions ending in the window.
        self.window: tuple[float, float] | None = None
        self.answered_in_window = 0
        self.window_latencies: list[float] = []

    @property
    def requests_by_server(self) -> list[int]:
        return [endpoint.requests for endpoint in self.endpoints]

    def _connection(self, endpoint: _Endpoint) -> http.client.HTTPConnection:
        # Never reuse a connection the server may already have closed for idleness (gunicorn's
        # keepalive is 5 s): a request sent into a closing connection fails without reaching it.
        if endpoint.conn is not None and time.monotonic() - endpoint.last_used > self.idle_limit:
            endpoint.close()
        if endpoint.conn is None:
            if endpoint.https:
                endpoint.conn = http.client.HTTPSConnection(
                    endpoint.host, endpoint.port, timeout=self.timeout, context=self.context
                )
            else:
                endpoint.conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.timeout)
        return endpoint.conn

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()

    def post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        data = json.dumps(body).encode()
        endpoint = self.endpoints[self.next % len(self.endpoints)]
        self.next += 1
        endpoint.requests += 1
        started = time.perf_counter()
        try:
            conn = self._connection(endpoint)
            conn.request("POST", path, body=data, headers=self.headers)
            response = conn.getresponse()
            payload = response.read()
            endpoint.last_used = time.monotonic()
            if response.will_close:
                endpoint.close()
        except (OSError, http.client.HTTPException) as exc:
            endpoint.close()
            raise ExchangeError(f"{type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter() - started
        self.latencies.append(elapsed)
        if self.window is not None and self.window[0] <= time.time() <= self.window[1]:
            self.answered_in_window += 1
            self.window_latencies.append(elapsed)
        if response.status != expect:
            raise ExchangeError(f"HTTP {response.status}: {payload[:200].decode('utf-8', 'replace')}")
        return json.loads(payload)

    def open_session(self, mode: str) -> dict[str, Any]:
        return self.post("/api/v1/relay/sessions/", {"mode": mode}, 201)

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        path = f"/api/v1/relay/sessions/{session}/exchanges/"
        return self.post(path, {"exchange": number, "responses": responses}, 200)


class MemoryCard:
    """An emulated card kept in memory between presentations: what the card does is the same as
    :class:`cardsim.transport.InProcessCard`, but no state file is written (and fsynced) after each
    command. :meth:`present` powers it up for a new session; :meth:`save` writes it back once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.card = Card(store.load(self.path), on_change=self._changed)
        self.dirty = False

    def _changed(self, _state: Any) -> None:
        self.dirty = True

    def present(self) -> MemoryCard:
        self.card.power_on()
        return self

    def transmit(self, capdu: bytes) -> bytes:
        return self.card.transmit(bytes(capdu))

    def save(self) -> None:
        if self.dirty:
            store.save(self.path, self.card.state)
            self.dirty = False


# ---------------------------------------------------------------------------------------------
# the job feeder (Django, one per agent process)


# The job of each session, and the token row's security domain it is queued for: lock/unlock of the
# load bank's SSD (an ISD stage), a key rotation of Load Bank D's SSD (a bank SSD stage delegated to
# its key service), a key rotation of the load bank's SSD (the same bank stage, platform custody).
JOBS = {"lock": "sd_id", "rotate": "delegated_sd_id", "rotate-custody": "sd_id"}


class Feeder(threading.Thread):
    """Queues each card's next small job (lock, then unlock, ...) through ``cards.services``.

    Agents ask with :meth:`ensure`; requests are served in batches (one query for the batch's
    security domains, one for their open jobs, then one short transaction per job) by this one
    thread: one database connection per process, whatever the number of agents.
    """

    def __init__(self, operator: str, *, share_with: Feeder | None = None, job: str = "lock") -> None:
        super().__init__(daemon=True, name="feeder")
        if job not in JOBS:
            raise ValueError(f"job {job!r}: one of {', '.join(JOBS)}")
        self.job = share_with.job if share_with is not None else job
        # Several feeders may serve one queue (each with its own database connection).
        self.requests: queue.Queue[tuple[int, threading.Event, list[str]]] = (
            share_with.requests if share_with is not None else queue.Queue()
        )
        self.operator_name = operator
        self.stopping = share_with.stopping if share_with is not None else threading.Event()
        # This thread's CPU time inside the measured window (start, end; wall clock), reported
        # apart from the agents': queueing jobs is the banks' work, not the cards' or the relay's.
        self.window: tuple[float, float] | None = None
        self._cpu_from: float | None = None
        self._cpu_to: float | None = None

    @property
    def window_cpu(self) -> float:
        """Seconds of this thread's CPU time inside the window (0 until it has closed)."""
        if self._cpu_from is None or self._cpu_to is None:
            return 0.0
        return self._cpu_to - self._cpu_from

    def _mark_window(self) -> None:
        if self.window is None:
            return
        now = time.time()
        if self._cpu_from is None and now >= self.window[0]:
            self._cpu_from = time.thread_time()
        if self._cpu_from is not None and self._cpu_to is None and now >= self.window[1]:
            self._cpu_to = time.thread_time()

    def ensure(self, sd_id: int, timeout: float = 60.0) -> str:
        """Make sure the card of ``sd_id`` has an open job; '' or an error message."""
        done = threading.Event()
        box: list[str] = []
        self.requests.put((sd_id, done, box))
        if not done.wait(timeout):
            return "job feeder timed out"
        return box[0] if box else ""

    def run(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db import close_old_connections

        operator = get_user_model().objects.get(username=self.operator_name)
        while not self.stopping.is_set():
            self._mark_window()
            try:
                first = self.requests.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 64:
                    batch.append(self.requests.get_nowait())
            try:
                self._serve(batch, operator)
            except Exception as exc:  # reported to every waiting agent; the feeder goes on
                close_old_connections()
                for _sd, done, box in batch:
                    if not box:
                        box.append(f"feeder: {type(exc).__name__}: {exc}")
                    done.set()
        self._mark_window()

    def _serve(self, batch: list[tuple[int, threading.Event, list[str]]], operator: Any) -> None:
        from cards import services
        from cards.models import CardJob, SecurityDomain
        from ecard.errors import ServiceError

        sds = {sd.pk: sd for sd in SecurityDomain.objects.filter(pk__in=[sd for sd, _d, _b in batch])}
        busy = set(
            CardJob.objects.filter(
                card_id__in=[sd.card_id for sd in sds.values()], state__in=CardJob.OPEN_STATES
            ).values_list("card_id", flat=True)
        )
        # One transaction per job, as a bank operator's request would be: the job's audit entry
        # holds the log's append lock until its commit, so a batch in one transaction would hold
        # up every relay exchange that appends meanwhile.
        for sd_id, done, box in batch:
            sd = sds.get(sd_id)
            if sd is None:
                box.append(f"no security domain {sd_id}")
            elif sd.card_id not in busy:  # an open job (interrupted session) is resumed, not doubled
                try:
                    if self.job.startswith("rotate"):  # 0x31, ..., 0x3F, 0x31, ... (cards.services.next_kvn)
                        services.request_key_rotation(security_domain=sd, actor=operator)
                    else:
                        services.request_sd_lock(
                            security_domain=sd, lock=sd.lifecycle != SecurityDomain.Lifecycle.LOCKED, actor=operator
                        )
                except ServiceError as exc:
                    box.append(f"queue: {exc}")
                busy.add(sd.card_id)
            done.set()


# ---------------------------------------------------------------------------------------------
# agents


@dataclass
class AgentStats:
    sessions: int = 0  # complete sessions (job done, nothing pending) finished inside the window
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # per exchange, seconds, answered inside the window
    session_times: list[float] = field(default_factory=list)
    queue_times: list[float] = field(default_factory=list)
    done_jobs: list[int] = field(default_factory=list)  # job ids the agents saw done
    interrupted: list[str] = field(default_factory=list)  # CINs whose last session did not complete
    by_exchange: dict[int, list[float]] = field(default_factory=dict)  # exchange number -> latencies
    requests_by_server: list[int] = field(default_factory=list)  # HTTP requests each server received
    window_requests: int = 0  # HTTP requests answered inside the window (any session, complete or not)
    feeder_cpu: float = 0.0  # CPU seconds the job feeders spent inside the window

    def merge(self, other: AgentStats) -> None:
        self.sessions += other.sessions
        self.errors += other.errors
        self.error_samples += other.error_samples[: max(0, 20 - len(self.error_samples))]
        self.latencies += other.latencies
        self.session_times += other.session_times
        self.queue_times += other.queue_times
        self.done_jobs += other.done_jobs
        self.interrupted += other.interrupted
        for number, values in other.by_exchange.items():
            self.by_exchange.setdefault(number, []).extend(values)
        self.requests_by_server = add_counts(self.requests_by_server, other.requests_by_server)
        self.window_requests += other.window_requests
        self.feeder_cpu += other.feeder_cpu


def add_counts(a: list[int], b: list[int]) -> list[int]:
    size = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(size)]


def _agent(
    row: dict[str, Any],
    base_url: str | list[str],
    context: ssl.SSLContext | None,
    feeder: Feeder,
    start_at: float,
    deadline: float,
    stats: AgentStats,
    lock: threading.Lock,
    memory_cards: bool = False,
    index: int = 0,
    ramp: float = 0.0,
) -> None:
    # Agents start on different servers, so the groups share the load from the first request.
    relay = KeepAliveRelay(base_url, row["token"], context=context, start=index)
    relay.window = (start_at, deadline)
    memory = MemoryCard(row["state_file"]) if memory_cards else None
    interrupted = False
    # With a ramp the load runs before the window opens: the window sees the steady state, not
    # the pipeline filling (at N = 200 a session takes seconds).
    while time.time() < start_at - ramp:
        time.sleep(0.01)
    while time.time() < deadline:
        t0 = time.perf_counter()
        problem = feeder.ensure(row[JOBS[feeder.job]])
        t1 = time.perf_counter()
        if problem:
            with lock:
                stats.errors += 1
                if len(stats.error_samples) < 20:
                    stats.error_samples.append(f"{row['username']}: {problem}")
            time.sleep(0.2)
            continue
        relay.latencies = []
        try:
            card = memory.present() if memory is not None else InProcessCard(row["state_file"])
            result = run_session(card, relay)
            error = result.error
            if not error and (result.pending or not result.jobs or not result.ok):
                error = f"session ended with jobs {result.jobs} and {result.pending} pending"
        except (RelayError, OSError, ValueError, KeyError) as exc:
            error, result = f"{type(exc).__name__}: {exc}", None
        t2 = time.perf_counter()
        in_window = start_at <= time.time() <= deadline
        with lock:
            if in_window:
                for number, value in enumerate(relay.latencies, start=1):
                    stats.by_exchange.setdefault(number, []).append(value)
            if error:
                stats.errors += 1
                interrupted = True
                if len(stats.error_samples) < 20:
                    stats.error_samples.append(f"{row['username']}: {error}")
            else:
                interrupted = False
                if result is not None:
                    stats.done_jobs += [int(job["id"]) for job in result.jobs if job.get("state") == "done"]
                if in_window:
                    stats.sessions += 1
                    stats.session_times.append(t2 - t1)
                    stats.queue_times.append(t1 - t0)
        if error:
            time.sleep(0.05)  # a failed presentation: the holder presents the card again
    relay.close()
    if memory is not None:
        memory.save()
    with lock:
        stats.requests_by_server = add_counts(stats.requests_by_server, relay.requests_by_server)
        stats.window_requests += relay.answered_in_window
        stats.latencies += relay.window_latencies  # every request answered in the window
        if interrupted:
            stats.interrupted.append(row["cin"])


def _agent_process(
    rows: list[dict[str, Any]],
    env: dict[str, str],
    base_url: str | list[str],
    start_at: float,
    deadline: float,
    out: Any,
    operator: str,
    memory_cards: bool = False,
    first_index: int = 0,
    ramp: float = 0.0,
    job: str = "lock",
) -> None:
    os.environ.update(env)
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["PGAPPNAME"] = BENCH_PG_APPNAME  # the feeders' connections are the bench's, not the platform's
    os.environ["DJANGO_SETTINGS_MODULE"] = "ecard.settings"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import django

    django.setup()
    context = ssl_context(env)
    feeder = Feeder(operator, job=job)
    feeders = [feeder] + [Feeder(operator, share_with=feeder) for _ in range(min(1, len(rows) // 8))]
    for each in feeders:
        each.window = (start_at, deadline)
        each.start()
    stats = AgentStats()
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=_agent,
            args=(row, base_url, context, feeder, start_at, deadline, stats, lock, memory_cards, first_index + i, ramp),
            daemon=True,
        )
        for i, row in enumerate(rows)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.time() + 120))
    feeder.stopping.set()
    for each in feeders:
        each.join(timeout=5)
    stats.feeder_cpu = sum(each.window_cpu for each in feeders)
    out.put(stats)


@dataclass
class LoadResult:
    agents: int
    seconds: float
    stats: AgentStats
    cpu: dict[str, float] = field(default_factory=dict)  # cores used per process group
    agent_processes: int = 1

    @property
    def rate(self) -> float:
        return self.stats.sessions / self.seconds if self.seconds else 0.0

    @property
    def exchanges_per_session(self) -> float:
        """HTTP requests of a complete session (5 today), from the sessions that completed."""
        firsts = len(self.stats.by_exchange.get(1, []))
        return sum(len(v) for v in self.stats.by_exchange.values()) / firsts if firsts else 0.0

    @property
    def session_equivalents(self) -> float:
        """Requests answered in the window / requests per session: the work the window served, in
        sessions. Unlike complete sessions it does not miss the sessions cut by the window's edges
        (at N = 200 a session can take longer than a short window)."""
        per = self.exchanges_per_session
        return self.stats.window_requests / per if per else float(self.stats.sessions)

    def percentile(self, p: float, values: list[float] | None = None) -> float:
        data = sorted(self.stats.latencies if values is None else values)
        if not data:
            return 0.0
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k] * 1000

    def summary(self) -> str:
        return (
            f"{self.agents} agents: {self.rate:.1f} sessions/s, p50 {self.percentile(50):.0f} ms, "
            f"p99 {self.percentile(99):.0f} ms, {self.stats.errors} errors"
        )


def read_tokens(path: Path, count: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < count:
        raise RuntimeError(f"{path} has {len(rows)} cards; {count} needed (seed_load --cards {count})")
    return rows[:count]


def run_load(
    *,
    rows: list[dict[str, Any]],
    env: dict[str, str],
    base_url: str | list[str],
    seconds: float,
    processes: int,
    groups: Callable[[], dict[str, list[int]]] | None = None,
    during: Callable[[float], None] | None = None,
    operator: str = "loadbank_op",
    warmup: float = 2.0,
    memory_cards: bool = False,
    ramp: float = 0.0,
    job: str = "lock",
) -> LoadResult:
    """Run ``len(rows)`` agents for ``seconds`` (after a short start-up); ``during(t)`` is called
    about every 0.5 s with the time since the window opened (fault injection). ``base_url`` may
    name several servers (comma-separated or a list): every HTTP request goes to the next one.
    ``memory_cards`` keeps each card in memory for the run (written back at the end) instead of
    writing its state file after every command (what the fault test needs: a killed agent is a
    pulled card). ``ramp`` seconds of load run before the window opens (not measured). ``job``: what
    each session does (:data:`JOBS`; for ``rotate``, of the delegated SSD, ``operator`` must name
    Load Bank D's operator)."""
    urls = split_urls(base_url)
    processes = max(1, min(processes, len(rows)))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + warmup + 0.5 * processes + ramp
    deadline = start_at + seconds
    shares = [rows[i::processes] for i in range(processes)]
    workers = [
        ctx.Process(
            target=_agent_process,
            args=(share, env, urls, start_at, deadline, out, operator, memory_cards, i, ramp, job),
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    meter = CpuMeter(groups or (lambda: {}))
    while time.time() < start_at:
        time.sleep(0.01)
    meter.start()
    while time.time() < deadline:
        time.sleep(0.5)
        if during is not None:
            during(time.time() - start_at)
    meter.stop()
    total = AgentStats()
    for _ in workers:
        try:
            total.merge(out.get(timeout=240))
        except queue.Empty:
            total.errors += 1
            total.error_samples.append("an agent process did not report")
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
    cpu = meter.cores()
    if "bench" in cpu:  # the generator's processes: the job feeders' share reported apart
        cpu["feeders"] = total.feeder_cpu / seconds
        cpu["bench"] = max(0.0, cpu["bench"] - cpu["feeders"])
    return LoadResult(agents=len(rows), seconds=seconds, stats=total, cpu=cpu, agent_processes=processes)


# ---------------------------------------------------------------------------------------------
# fault-test helpers (run in subprocesses with the topology's environment)


def drain(
    rows: list[dict[str, Any]], base_url: str | list[str], context: ssl.SSLContext | None, tries: int = 4
) -> dict[str, Any]:
    """Present every card until it reports no pending work (at most ``tries`` presentations each).
    Queues nothing: whatever is left from interrupted sessions resumes here."""
    report: dict[str, Any] = {"presentations": 0, "left": {}, "done_jobs": [], "errors": []}
    for row in rows:
        relay = KeepAliveRelay(base_url, row["token"], context=context)
        pending = -1
        for _ in range(tries):
            report["presentations"] += 1
            try:
                result = run_session(InProcessCard(row["state_file"]), relay)
            except (RelayError, OSError, ValueError, KeyError) as exc:
                report["errors"].append(f"{row['username']}: {type(exc).__name__}: {exc}")
                time.sleep(0.5)
                continue
            report["done_jobs"] += [int(job["id"]) for job in result.jobs if job.get("state") == "done"]
            pending = result.pending
            if not result.error and pending == 0:
                break
        relay.close()
        if pending != 0:
            report["left"][row["cin"]] = pending
    return report


def unlock_sds(sd_ids: list[int], operator: str = "loadbank_op") -> None:
    """Queue an unlock of each of these SSDs that the lock job left LOCKED (a key rotation cannot
    select a locked SSD: GP 2.3.1 §5.3.2); prints how many. Run in the topology's environment."""
    from django.contrib.auth import get_user_model

    from cards import services
    from cards.models import SecurityDomain
    from ecard.errors import ServiceError

    actor = get_user_model().objects.get(username=operator)
    queued = 0
    for sd in SecurityDomain.objects.filter(pk__in=sd_ids, lifecycle=SecurityDomain.Lifecycle.LOCKED):
        with contextlib.suppress(ServiceError):  # an unlock already pending
            services.request_sd_lock(security_domain=sd, lock=False, actor=actor)
            queued += 1
    print(json.dumps({"unlocks": queued}))


def fault_report(tokens: str) -> None:
    """Print (JSON) what the fault test checks, from the database and the cards: per card its jobs
    and their audit entries, and whether the card's lock state matches the platform's record."""
    from audit.models import AuditEntry
    from cards.models import Card, CardJob, SecurityDomain

    rows = [json.loads(line) for line in Path(tokens).read_text().splitlines() if line.strip()]
    cins = [row["cin"] for row in rows]
    queued: dict[str, int] = {}
    done_entries: dict[str, int] = {}
    for entry in AuditEntry.objects.filter(action__in=("job.queued", "job.done"), card_cin__in=cins).values(
        "action", "subject_id"
    ):
        target = queued if entry["action"] == "job.queued" else done_entries
        target[entry["subject_id"]] = target.get(entry["subject_id"], 0) + 1
    cards = []
    for card in Card.objects.filter(cin__in=cins).order_by("cin"):
        jobs = list(card.jobs.order_by("id").values("id", "kind", "state", "attempts"))
        sd = SecurityDomain.objects.get(card=card, is_isd=False, state=SecurityDomain.State.ACTIVE)
        state = json.loads(Path(card.state_file).read_text())
        on_card_locked = bool(state["apps"][sd.aid]["lifecycle"] & 0x80)
        cards.append(
            {
                "cin": card.cin,
                "jobs": jobs,
                "open": [j["id"] for j in jobs if j["state"] in CardJob.OPEN_STATES],
                "failed": [j["id"] for j in jobs if j["state"] == CardJob.State.FAILED],
                "queued_entries": {str(j["id"]): queued.get(str(j["id"]), 0) for j in jobs},
                "done_entries": {str(j["id"]): done_entries.get(str(j["id"]), 0) for j in jobs},
                "record_locked": sd.lifecycle == SecurityDomain.Lifecycle.LOCKED,
                "card_locked": on_card_locked,
            }
        )
    print(json.dumps({"cards": cards, "audit_size": AuditEntry.objects.count()}))


def _cli(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="load-test kit (used by tests/ops/test_fault.py)")
    parser.add_argument("command", choices=["load", "drain"])
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.command == "load":
        rows = read_tokens(Path(args.tokens), args.agents)
        result = run_load(rows=rows, env=env, base_url=args.server, seconds=args.seconds, processes=args.processes)
        body: dict[str, Any] = {
            "summary": result.summary(),
            "sessions": result.stats.sessions,
            "errors": result.stats.errors,
            "error_samples": result.stats.error_samples,
            "done_jobs": result.stats.done_jobs,
            "interrupted": result.stats.interrupted,
        }
    else:
        rows = read_tokens(Path(args.tokens), args.agents)
        body = drain(rows, args.server, ssl_context(env))
    Path(args.out).write_text(json.dumps(body))
    print(body.get("summary", f"drain: {body.get('presentations')} presentations, left {body.get('left')}"))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
