"""``python -m agent --server URL (--reader NAME | --card-file STATE.json) [--token T] [--mode M] [--loop]``.

Waits for a card in the reader, relays the card's sessions with the platform until it has no
pending work left, and shows progress on stderr (a bar per job on a terminal, plain lines
otherwise). Exit status: 0 when the card has no pending work left; otherwise non-zero with one
line saying why (see ``EXIT_*``). The token comes from ``--token`` or ``ECARD_AGENT_TOKEN`` and is
never printed.

``--loop`` (a terminal: an ATM, a kiosk) serves card after card in one run: it waits for a card,
serves it, writes one line with the card's CIN and outcome, waits for the card's removal, and
starts again, until Ctrl-C (the card in the reader is finished first) or ``--max-cards``. The
cards come from a :class:`CardFeed` (the PC/SC reader, emulated card files, or a test's cards).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from agent.core import CardTransport, NoMoreCards, RelayError, Server, SessionResult, run_session
from agent.http import HttpServer, ServerRefused, ServerUnreachable, SessionRejected

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_NO_CARD = 4
EXIT_UNREACHABLE = 5
EXIT_REFUSED = 6
EXIT_PENDING = 7
EXIT_INTERRUPTED = 130

TOKEN_ENV = "ECARD_AGENT_TOKEN"  # noqa: S105 - the name of an environment variable
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_SESSIONS = 3
LOOP_POLL_SECONDS = 1.0  # how often a loop waiting for a card or its removal looks at Ctrl-C
BAR_WIDTH = 24
PHASE_FRACTION = {"open": 0.0, "status": 1 / 3, "script": 2 / 3}


class Card(CardTransport, Protocol):
    def close(self) -> None: ...


CardSource = Callable[[str, float], Card]  # (reader name, timeout) -> connected card
ServerFactory = Callable[[str, str], Server]  # (server URL, token) -> relay API client


def _pcsc_source(reader: str, timeout: float) -> Card:
    from agent.pcsc import wait_for_card

    return wait_for_card(reader, timeout)


class _EmulatedCard:
    """A cardsim state file as a card in a reader (powered up on insertion, like a real one)."""

    def __init__(self, path: str) -> None:
        from cardsim.transport import InProcessCard

        self._card = InProcessCard(path)
        self._card.reset()

    def transmit(self, capdu: bytes) -> bytes:
        return self._card.transmit(capdu)

    def close(self) -> None:
        pass


def _file_source(path: str, timeout: float) -> Card:
    if not os.path.exists(path):
        from agent.pcsc import NoCard

        raise NoCard(f"no emulated card at {path}")
    return _EmulatedCard(path)


class CardFeed(Protocol):
    """Where a terminal's cards come from, one after the other (``--loop``)."""

    def wait_for_card(self, timeout: float) -> Card:
        """A connected card; raises :class:`RelayError` when none comes in ``timeout`` seconds
        (:class:`NoMoreCards` when the feed has no more cards at all)."""
        ...

    def wait_for_removal(self, timeout: float) -> bool:
        """True once the card served last has left the reader; False if it is still there after ``timeout``."""
        ...


class PcscFeed:
    """Cards inserted in one PC/SC reader; removal is detected by ``agent.pcsc``."""

    def __init__(self, reader: str) -> None:
        self.reader = reader

    def wait_for_card(self, timeout: float) -> Card:
        return _pcsc_source(self.reader, timeout)

    def wait_for_removal(self, timeout: float) -> bool:
        from agent.pcsc import wait_for_removal

        return wait_for_removal(self.reader, timeout)


class FileFeed:
    """Emulated cards (cardsim state files) presented in turn, each removed once served."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.index = 0

    def wait_for_card(self, timeout: float) -> Card:
        if self.index >= len(self.paths):
            raise NoMoreCards(f"all {len(self.paths)} card file(s) presented")
        return _file_source(self.paths[self.index], timeout)

    def wait_for_removal(self, timeout: float) -> bool:
        self.index += 1
        return True


def _short(label: str) -> str:
    return label.split(" (", 1)[0] if label else "job"


class ProgressView:
    """Renders relay progress: a bar per job (redrawn in place on a terminal) and the jobs done."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.labels: dict[int, str] = {}
        self._current: int | None = None
        self._last_plain: tuple[Any, ...] | None = None
        self._open_line = False
        self._drawn = 0  # width of the bar line on screen
        self._head = ""

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._drawn))
        self.stream.flush()
        self._drawn = len(text)
        self._open_line = True

    def write(self, line: str) -> None:
        self._end_line()
        self.stream.write(line + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
            self._drawn = 0

    def update(self, progress: dict[str, Any]) -> None:
        if not progress:
            return  # per-APDU mode: intermediate steps carry no progress
        current = progress.get("current")
        total = int(progress.get("jobs_total") or 0)
        finished = int(progress.get("jobs_finished") or 0)
        if not current:
            self._finish_bar()
            return
        job_id = int(current.get("id", 0))
        label = _short(str(current.get("label") or current.get("kind") or "job"))
        self.labels[job_id] = label
        if self._current is not None and self._current != job_id:
            self._finish_bar()
        self._current = job_id
        stages = max(int(current.get("stages") or 1), 1)
        stage = int(current.get("stage") or 0)
        phase = str(progress.get("phase") or "")
        fraction = min((stage + PHASE_FRACTION.get(phase, 0.0)) / stages, 1.0)
        head = f"job {finished + 1}/{max(total, finished + 1)} {label}"
        self._head = head
        if self.tty:
            filled = round(fraction * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self._draw(f"{head} [{bar}] {fraction:4.0%} stage {stage + 1}/{stages} {phase}")
        else:
            key = (job_id, stage)
            if key != self._last_plain:
                self._last_plain = key
                self.write(f"{head}: stage {stage + 1}/{stages} ({fraction:.0%})")

    def _finish_bar(self) -> None:
        if self._current is None:
            return
        if self.tty:
            self._draw(f"{self._head} [{'#' * BAR_WIDTH}] finished")  # done or failed: the list follows
            self._end_line()
        self._current = None

    def jobs_done(self, jobs: list[dict[str, Any]]) -> None:
        self._finish_bar()
        if not jobs:
            return
        self.write("jobs:")
        for job in jobs:
            label = self.labels.get(int(job.get("id", 0)), _short(str(job.get("kind", "job"))))
            line = f"  {job.get('state', '?'):<7} {label} (#{job.get('id')})"
            if job.get("error"):
                line += f": {job['error']}"
            self.write(line)


@dataclass
class Outcome:
    code: int
    message: str
    sessions: int = 0
    jobs: list[dict[str, Any]] = field(default_factory=list)
    results: list[SessionResult] = field(default_factory=list)


def relay(
    *,
    server: Server,
    card_source: CardSource,
    reader: str,
    timeout: float,
    mode: str = "batch",
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    view: ProgressView | None = None,
) -> Outcome:
    """Relay sessions until the card has no pending work, a job fails, or a session cannot go on."""
    note = view.write if view is not None else (lambda _line: None)
    outcome = Outcome(EXIT_OK, "")
    for number in range(1, max_sessions + 1):
        outcome.sessions = number
        try:
            card = card_source(reader, timeout)
        except RelayError as exc:
            return _end(outcome, EXIT_NO_CARD, str(exc), view)
        try:
            result = run_session(card, server, mode=mode, on_progress=view.update if view is not None else None)
        except SessionRejected as exc:
            if exc.after_retry and number < max_sessions:
                note(
                    f"the connection was lost mid-exchange and the server closed the session ({exc.reason}); "
                    "starting a new session"
                )
                continue
            return _end(outcome, EXIT_REJECTED, f"session rejected: {exc.reason}", view)
        except ServerUnreachable as exc:
            return _end(outcome, EXIT_UNREACHABLE, f"server unreachable: {exc}", view)
        except ServerRefused as exc:
            return _end(outcome, EXIT_REFUSED, f"server refused the request: {exc}", view)
        except RelayError as exc:  # the card went away mid-session
            if number < max_sessions:
                note(f"{exc}; waiting for the card to start a new session")
                continue
            return _end(outcome, EXIT_NO_CARD, str(exc), view)
        finally:
            card.close()
        outcome.results.append(result)
        outcome.jobs.extend(result.jobs)
        if result.error:
            return _end(outcome, EXIT_REJECTED, f"session rejected: {result.error}", view)
        if result.pending == 0:
            break
        if number < max_sessions:
            note(f"{result.pending} job(s) still pending; starting a new session")
    else:
        last = outcome.results[-1].pending if outcome.results else 0
        return _end(outcome, EXIT_PENDING, f"{last} job(s) still pending after {max_sessions} sessions", view)
    failed = [job for job in outcome.jobs if job.get("state") == "failed"]
    if failed:
        first = failed[0]
        label = view.labels.get(int(first.get("id", 0))) if view is not None else None
        name = f"{label or _short(str(first.get('kind', 'job')))} (#{first.get('id')})"
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return _end(outcome, EXIT_JOB_FAILED, f"job failed: {name}: {first.get('error', 'unknown error')}{more}", view)
    trips = sum(r.round_trips for r in outcome.results)
    apdus = sum(r.apdus for r in outcome.results)
    done = sum(1 for job in outcome.jobs if job.get("state") == "done")
    message = f"card up to date: {done} job(s) done, {trips} round trips, {apdus} APDUs"
    waiting = outcome.results[-1].waiting if outcome.results else 0
    if waiting:
        message += f"; {waiting} job(s) wait for the holder's own device"
    return _end(outcome, EXIT_OK, message, view)


def _end(outcome: Outcome, code: int, message: str, view: ProgressView | None) -> Outcome:
    outcome.code, outcome.message = code, message
    if view is not None:
        view.jobs_done(outcome.jobs)
    return outcome


FATAL_IN_LOOP = frozenset({EXIT_UNREACHABLE, EXIT_REFUSED})  # the server is gone or refuses this terminal


@dataclass
class LoopOutcome:
    code: int
    message: str
    cards: list[tuple[str, Outcome]] = field(default_factory=list)  # (CIN or "", outcome) per card


def card_line(number: int, cin: str, outcome: Outcome) -> str:
    """The one line a terminal writes per card: its number in this run, its CIN, its outcome."""
    status = "ok" if outcome.code == EXIT_OK else "error"
    return f"card {number} {cin or '(unidentified)'}: {status}: {outcome.message}"


def serve_cards(
    *,
    server: Server,
    feed: CardFeed,
    timeout: float,
    mode: str = "batch",
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    max_cards: int | None = None,
    stop: Callable[[], bool] = lambda: False,
    poll: float = LOOP_POLL_SECONDS,
    view: ProgressView | None = None,
    stream: TextIO | None = None,
) -> LoopOutcome:
    """Serve card after card: wait for one, relay its sessions (:func:`relay`), write its line,
    wait for its removal; until ``stop()``, ``max_cards`` cards, or the feed has no more cards.

    A card's own failure (a failed job, a rejected session, a card pulled) is its line only; the
    loop ends early only when the server is unreachable or refuses the credential (revoked)."""
    out = stream or sys.stderr
    outcome = LoopOutcome(EXIT_OK, "")
    while (max_cards is None or len(outcome.cards) < max_cards) and not stop():
        try:
            first: Card | None = feed.wait_for_card(poll)
        except NoMoreCards:
            break
        except RelayError:
            continue  # no card yet: keep waiting (and look at stop() again)

        def source(reader: str, wait: float) -> Card:
            nonlocal first
            if first is not None:
                card, first = first, None
                return card
            return feed.wait_for_card(wait)

        served = relay(
            server=server,
            card_source=source,
            reader="",
            timeout=timeout,
            mode=mode,
            max_sessions=max_sessions,
            view=view,
        )
        cin = next((r.card for r in reversed(served.results) if r.card), "")
        outcome.cards.append((cin, served))
        out.write(card_line(len(outcome.cards), cin, served) + "\n")
        out.flush()
        if served.code in FATAL_IN_LOOP:
            outcome.code, outcome.message = served.code, served.message
            return outcome
        while not feed.wait_for_removal(poll):
            if stop():
                break
    failed = sum(1 for _cin, served in outcome.cards if served.code != EXIT_OK)
    outcome.message = (
        f"{len(outcome.cards)} card(s) served: {len(outcome.cards) - failed} up to date, {failed} with errors"
    )
    return outcome


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent",
        description="Relay a card's pending work between a PC/SC reader and the E-Card platform.",
        epilog=f"exit status: {EXIT_OK} no pending work left, {EXIT_JOB_FAILED} a job failed, {EXIT_USAGE} usage, "
        f"{EXIT_REJECTED} session rejected, {EXIT_NO_CARD} no reader/card, {EXIT_UNREACHABLE} server unreachable, "
        f"{EXIT_REFUSED} request refused (e.g. bad token), {EXIT_PENDING} work still pending",
    )
    p.add_argument("--server", required=True, help="platform URL, e.g. https://ecard.example")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--reader", help="PC/SC reader name (or a unique prefix of it)")
    where.add_argument(
        "--card-file",
        action="append",
        help="an emulated card's state file (cardsim), driven in-process: the demo without pcscd "
        "(repeat it with --loop: the cards are presented in turn)",
    )
    p.add_argument("--token", default=None, help=f"device credential (default: ${TOKEN_ENV})")
    p.add_argument(
        "--mode",
        choices=("batch", "apdu"),
        default="batch",
        help="batch: scripts per round trip (default); apdu: one APDU per round trip (benchmarks)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for a card in the reader (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"sessions to try while work is left (default {DEFAULT_MAX_SESSIONS})",
    )
    p.add_argument(
        "--loop",
        action="store_true",
        help="a terminal: serve card after card (a line per card) until Ctrl-C or --max-cards",
    )
    p.add_argument("--max-cards", type=int, default=None, help="with --loop: stop after this many cards")
    return p


def main(
    argv: list[str] | None = None,
    *,
    card_source: CardSource | None = None,
    card_feed: CardFeed | None = None,
    server_factory: ServerFactory | None = None,
    stream: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    args = _parser().parse_args(argv)
    stream = stream if stream is not None else sys.stderr
    view = ProgressView(stream)
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        stream.write(f"agent: no agent token: pass --token or set {TOKEN_ENV}\n")
        return EXIT_USAGE
    if args.timeout < 0 or args.max_sessions < 1:
        stream.write("agent: --timeout must be >= 0 and --max-sessions >= 1\n")
        return EXIT_USAGE
    card_files: list[str] = args.card_file or []
    if not args.loop and (args.max_cards is not None or len(card_files) > 1):
        stream.write("agent: --max-cards and several --card-file need --loop\n")
        return EXIT_USAGE
    if args.max_cards is not None and args.max_cards < 1:
        stream.write("agent: --max-cards must be >= 1\n")
        return EXIT_USAGE

    def retrying(attempt: int, delay: float, why: str) -> None:
        view.write(f"server not answering ({why}); retry {attempt} in {delay:g} s")

    if server_factory is not None:
        server = server_factory(args.server, token)
    else:
        try:
            server = HttpServer(args.server, token, sleep=sleep, on_retry=retrying)
        except ValueError as exc:
            stream.write(f"agent: {exc}\n")
            return EXIT_USAGE
    if args.loop:
        feed = card_feed or (FileFeed(card_files) if card_files else PcscFeed(args.reader))
        return _main_loop(args, server=server, feed=feed, view=view, stream=stream)
    try:
        outcome = relay(
            server=server,
            card_source=card_source or (_file_source if card_files else _pcsc_source),
            reader=card_files[0] if card_files else args.reader,
            timeout=args.timeout,
            mode=args.mode,
            max_sessions=args.max_sessions,
            view=view,
        )
    except KeyboardInterrupt:
        stream.write("\nagent: interrupted; unfinished jobs resume at the card's next session\n")
        return EXIT_INTERRUPTED
    prefix = "agent: " if outcome.code == EXIT_OK else "agent: error: "
    stream.write(prefix + outcome.message + "\n")
    stream.flush()
    return outcome.code


def _main_loop(args: argparse.Namespace, *, server: Server, feed: CardFeed, view: ProgressView, stream: TextIO) -> int:
    """``--loop``: serve cards until Ctrl-C or ``--max-cards``. The first Ctrl-C lets the card in
    the reader finish and stops; a second one interrupts at once."""
    stopping = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        view.write("agent: stopping once the card in the reader is served (Ctrl-C again to abort)")

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if in_main_thread else None
    try:
        outcome = serve_cards(
            server=server,
            feed=feed,
            timeout=args.timeout,
            mode=args.mode,
            max_sessions=args.max_sessions,
            max_cards=args.max_cards,
            stop=stopping.is_set,
            view=view,
            stream=stream,
        )
    except KeyboardInterrupt:
        stream.write("\nagent: interrupted; unfinished jobs resume at the card's next session\n")
        return EXIT_INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    prefix = "agent: " if outcome.code == EXIT_OK else "agent: error: "
    stream.write(prefix + outcome.message + "\n")
    stream.flush()
    return outcome.code
