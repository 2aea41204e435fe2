"""``python -m agent --loop``: a terminal serves card after card, a line per card, with an injected
card feed (no Django, no PC/SC); stops on --max-cards, Ctrl-C, or a refused credential."""

from __future__ import annotations

import io
import os
import signal
from typing import Any

from agent import cli
from agent.core import NoMoreCards
from agent.http import ServerRefused
from agent.pcsc import NoCard
from cardsim.cli import main as cardsim_main
from tests.agent.test_cli import ARGS, FakeCard, FakeServer, done

LOOP_ARGS = ["--server", "http://127.0.0.1:9", "--reader", "ATM reader", "--token", ARGS[-1], "--loop"]


class FakeFeed:
    """Cards inserted one after another; each stays ``linger`` polls in the reader after it is served.
    ``gaps``: polls with an empty reader before each card. ``on_wait(n)``: called at each wait."""

    def __init__(self, cards: list[FakeCard], *, linger: int = 0, gaps: int = 0, on_wait: Any = None) -> None:
        self.cards = list(cards)
        self.linger = linger
        self.gaps = gaps
        self.on_wait = on_wait
        self.waits = 0
        self.removal_polls = 0
        self.current: FakeCard | None = None
        self._gap = gaps

    def wait_for_card(self, timeout: float) -> FakeCard:
        self.waits += 1
        if self.on_wait is not None:
            self.on_wait(self.waits)
        if self.current is not None:
            return self.current  # a new session on the card still in the reader
        if self._gap:
            self._gap -= 1
            raise NoCard("no card yet")
        if not self.cards:
            raise NoMoreCards("no more cards")
        self.current = self.cards.pop(0)
        return self.current

    def wait_for_removal(self, timeout: float) -> bool:
        self.removal_polls += 1
        if self.removal_polls % (self.linger + 1):
            return False
        self.current = None
        self._gap = self.gaps
        return True


def identified(cin: str, **extra: Any) -> dict[str, Any]:
    return {**done(**extra), "card": cin}


def run_loop(server: Any, feed: Any, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main([*LOOP_ARGS, *extra], card_feed=feed, server_factory=lambda url, token: server, stream=out)
    text = out.getvalue()
    assert "very-secret" not in text
    return code, text


def card_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("card ")]


def test_serves_card_after_card_with_a_line_each_and_waits_for_removal() -> None:
    server = FakeServer([identified("A1"), identified("B2"), identified("C3")])
    feed = FakeFeed([FakeCard(), FakeCard(), FakeCard()], linger=2, gaps=1)
    code, text = run_loop(server, feed)
    assert code == cli.EXIT_OK and server.sessions == 3
    lines = card_lines(text)
    assert lines == [
        "card 1 A1: ok: card up to date: 1 job(s) done, 5 round trips, 4 APDUs",
        "card 2 B2: ok: card up to date: 1 job(s) done, 5 round trips, 4 APDUs",
        "card 3 C3: ok: card up to date: 1 job(s) done, 5 round trips, 4 APDUs",
    ]
    assert feed.removal_polls == 9  # each card stayed two polls after it was served
    assert text.splitlines()[-1] == "agent: 3 card(s) served: 3 up to date, 0 with errors"


def test_a_cards_failure_is_its_line_and_the_loop_goes_on() -> None:
    server = FakeServer([identified("A1", state="failed", error="6A84"), identified("B2")])
    code, text = run_loop(server, FakeFeed([FakeCard(), FakeCard()]))
    assert code == cli.EXIT_OK
    assert card_lines(text) == [
        "card 1 A1: error: job failed: Enroll bank (#7): 6A84",
        "card 2 B2: ok: card up to date: 1 job(s) done, 5 round trips, 4 APDUs",
    ]
    assert text.splitlines()[-1] == "agent: 2 card(s) served: 1 up to date, 1 with errors"


def test_max_cards_stops_the_loop() -> None:
    server = FakeServer([identified("A1"), identified("B2"), identified("C3")])
    code, text = run_loop(server, FakeFeed([FakeCard(), FakeCard(), FakeCard()]), "--max-cards", "2")
    assert code == cli.EXIT_OK and server.sessions == 2 and len(card_lines(text)) == 2


def test_a_refused_credential_stops_the_loop_at_once() -> None:
    server = FakeServer([identified("A1")])
    opened = server.open_session

    def open_session(mode: str) -> dict[str, Any]:
        if server.sessions >= 1:
            raise ServerRefused(401, "Invalid or revoked agent credential.")
        return opened(mode)

    server.open_session = open_session  # type: ignore[method-assign]
    feed = FakeFeed([FakeCard(), FakeCard(), FakeCard()])
    code, text = run_loop(server, feed)
    assert code == cli.EXIT_REFUSED
    lines = card_lines(text)
    assert len(lines) == 2 and lines[1].startswith("card 2 (unidentified): error: server refused the request: HTTP 401")
    assert len(feed.cards) == 1  # the third card was never served
    assert (
        text.splitlines()[-1]
        == "agent: error: server refused the request: HTTP 401: Invalid or revoked agent credential."
    )


def test_ctrl_c_finishes_the_card_in_the_reader_and_stops_cleanly() -> None:
    server = FakeServer([identified("A1"), identified("B2"), identified("C3")])

    def interrupt(wait: int) -> None:
        if wait == 2:  # the second card is being inserted
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    code, text = run_loop(server, FakeFeed([FakeCard(), FakeCard(), FakeCard()], on_wait=interrupt))
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    assert code == cli.EXIT_OK
    assert "stopping once the card in the reader is served" in text
    assert len(card_lines(text)) == 2 and server.sessions == 2


def test_a_second_ctrl_c_interrupts_at_once() -> None:
    server = FakeServer([identified("A1"), identified("B2")])

    class InterruptingCard(FakeCard):
        def transmit(self, capdu: bytes) -> bytes:
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, mid-session
            return super().transmit(capdu)

    def interrupt(wait: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the first, as the card is inserted

    code, text = run_loop(server, FakeFeed([InterruptingCard(), FakeCard()], on_wait=interrupt))
    assert code == cli.EXIT_INTERRUPTED and "interrupted" in text.splitlines()[-1]


def test_loop_options_need_loop() -> None:
    out = io.StringIO()
    assert cli.main([*ARGS, "--max-cards", "2"], stream=out) == cli.EXIT_USAGE
    assert cli.main([*LOOP_ARGS, "--max-cards", "0"], stream=out) == cli.EXIT_USAGE
    argv = ["--server", "http://x", "--token", "t", "--card-file", "a.json", "--card-file", "b.json"]
    assert cli.main(argv, stream=out) == cli.EXIT_USAGE
    assert "need --loop" in out.getvalue()


def test_file_feed_presents_each_card_file_once(tmp_path) -> None:
    paths = []
    for n in range(2):
        path = tmp_path / f"card{n}.json"
        assert cardsim_main(["init", str(path)]) == 0
        paths.append(str(path))
    feed = cli.FileFeed(paths)
    first = feed.wait_for_card(1.0)
    assert first.transmit(bytes.fromhex("00A4040000"))[-2:] == b"\x90\x00"
    assert feed.wait_for_card(1.0) is not None  # same card again (a new session)
    assert feed.wait_for_removal(1.0)
    feed.wait_for_card(1.0)
    assert feed.wait_for_removal(1.0)
    try:
        feed.wait_for_card(1.0)
    except NoMoreCards:
        pass
    else:
        raise AssertionError("a third card file does not exist")


class _Exceptions:
    class SmartcardException(Exception):
        pass

    class CardConnectionException(SmartcardException):
        def __init__(self, hresult: int = 0) -> None:
            super().__init__("card connection")
            self.hresult = hresult

    class NoCardException(SmartcardException):
        pass


class _CardConnection:
    T0_protocol = 1
    T1_protocol = 2


class _ConnectionModule:
    CardConnection = _CardConnection


def fake_reader(answers: list[Exception | None]) -> Any:
    """A reader whose connection attempts give ``answers`` in turn (None: a card answers)."""

    class Connection:
        disconnected = 0

        def connect(self, protocols: int) -> None:
            answer = answers.pop(0)
            if answer is not None:
                raise answer

        def disconnect(self) -> None:
            Connection.disconnected += 1

    class Reader:
        def createConnection(self) -> Connection:
            return Connection()

    return Reader()


def test_pcsc_removal_is_detected_by_polling_the_reader(monkeypatch) -> None:
    from agent import pcsc

    monkeypatch.setattr(pcsc, "_pyscard", lambda: (_ConnectionModule, _Exceptions, None))
    clock = iter(range(100))
    present_then_gone = [
        None,
        _Exceptions.CardConnectionException(pcsc.SHARING_VIOLATION),
        _Exceptions.NoCardException(),
    ]
    monkeypatch.setattr(pcsc, "_find_reader", lambda name: fake_reader(present_then_gone))
    assert pcsc.wait_for_removal("ATM", 10, sleep=lambda _s: None, clock=lambda: next(clock))
    assert present_then_gone == []  # a card held by another application is still there

    still_there = [None] * 5
    monkeypatch.setattr(pcsc, "_find_reader", lambda name: fake_reader(still_there))
    clock = iter(range(100))
    assert not pcsc.wait_for_removal("ATM", 2, sleep=lambda _s: None, clock=lambda: next(clock))

    removed = [_Exceptions.CardConnectionException(pcsc.REMOVED_CARD)]
    monkeypatch.setattr(pcsc, "_find_reader", lambda name: fake_reader(removed))
    assert pcsc.wait_for_removal("ATM", 2, sleep=lambda _s: None)

    def no_reader(name: str) -> Any:
        raise pcsc.NoReader("unplugged")

    monkeypatch.setattr(pcsc, "_find_reader", no_reader)
    assert pcsc.wait_for_removal("ATM", 2, sleep=lambda _s: None)
