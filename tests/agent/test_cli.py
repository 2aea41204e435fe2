"""``python -m agent``: exit codes, one-line messages and progress output, with a fake relay server
and a fake card (no Django, no PC/SC)."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest

from agent import cli
from agent.http import ServerRefused, SessionRejected
from agent.pcsc import CardGone, NoCard
from tests.shared_data import PROJECT_ROOT

TOKEN = "eca_abcdef012345_very-secret-token-value"
ARGS = ["--server", "http://127.0.0.1:9", "--reader", "Fake Reader", "--token", TOKEN]
ENROLL = {"id": 7, "kind": "enroll_bank", "label": "Enroll bank (install SSD, bank keys, default applets)", "stages": 3}


class FakeCard:
    def __init__(self, *, fail_after: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.closed = 0
        self.fail_after = fail_after

    def transmit(self, capdu: bytes) -> bytes:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise CardGone("the card in 'Fake Reader' stopped answering")
        self.sent.append(capdu)
        return b"\x90\x00"

    def close(self) -> None:
        self.closed += 1


class FakeServer:
    """Each session: an identify batch, one batch per stage of a job, then the end with ``results[n]``."""

    def __init__(self, results: list[dict[str, Any]], *, fail: list[Exception | None] | None = None) -> None:
        self.results = list(results)
        self.fail = list(fail or [])
        self.sessions = 0
        self.tokens_seen: list[str] = []

    def _batch(self, number: int, stage: int | None) -> dict[str, Any]:
        current = None if stage is None else {**ENROLL, "stage": stage}
        progress = {"jobs_total": 1, "jobs_finished": 0, "current": current, "phase": "script"}
        return {
            "session": f"s{self.sessions}",
            "exchange": number,
            "state": "open",
            "commands": [{"apdu": "80F24000024F00", "expect": ["9000"], "label": "read registry"}],
            "done": False,
            "progress": progress,
        }

    def open_session(self, mode: str) -> dict[str, Any]:
        self.sessions += 1
        failure = self.fail.pop(0) if self.fail else None
        self._failure = failure
        return self._batch(1, None)

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        if self._failure is not None and number == 2:
            raise self._failure
        if number <= 3:
            return self._batch(number + 1, number - 1)
        result = self.results.pop(0) if self.results else {"jobs": [], "pending": 0}
        finished = {"jobs_total": 1, "jobs_finished": 1, "current": None, "phase": "done"}
        return {
            "session": session,
            "exchange": number + 1,
            "state": "done",
            "commands": [],
            "done": True,
            "progress": finished,
            "result": result,
        }


def run(server: FakeServer | None, card_source: Any, *extra: str, tty: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    out.isatty = lambda: tty  # type: ignore[method-assign]
    factory = (lambda url, token: server) if server is not None else None
    code = cli.main([*ARGS, *extra], card_source=card_source, server_factory=factory, stream=out, sleep=lambda _s: None)
    text = out.getvalue()
    assert "very-secret" not in text
    return code, text


def cards(*made: FakeCard) -> Any:
    queue = list(made)

    def source(reader: str, timeout: float) -> FakeCard:
        assert reader == "Fake Reader"
        return queue.pop(0)

    return source


def done(state: str = "done", **extra: Any) -> dict[str, Any]:
    return {"jobs": [{"id": 7, "kind": "enroll_bank", "state": state, **extra}], "pending": 0}


def test_no_pending_work_left_exits_0_with_progress_and_jobs_done() -> None:
    card = FakeCard()
    code, text = run(FakeServer([done()]), cards(card))
    assert code == cli.EXIT_OK
    lines = text.splitlines()
    assert lines[-1].startswith("agent: card up to date: 1 job(s) done, 5 round trips, 4 APDUs")
    assert "job 1/1 Enroll bank: stage 1/3" in text and "job 1/1 Enroll bank: stage 3/3" in text
    assert "jobs:" in lines and "  done    Enroll bank (#7)" in lines
    assert "\r" not in text  # plain output when not a terminal
    assert card.closed == 1 and len(card.sent) == 4


def test_progress_bar_on_a_terminal() -> None:
    code, text = run(FakeServer([done()]), cards(FakeCard()), tty=True)
    assert code == 0
    assert "\rjob 1/1 Enroll bank [" in text and "] finished" in text


def test_failed_job_exits_1_with_its_error() -> None:
    code, text = run(
        FakeServer([done("failed", error="install applet 0102: the card answered 6A84")]), cards(FakeCard())
    )
    assert code == cli.EXIT_JOB_FAILED
    assert text.splitlines()[-1] == (
        "agent: error: job failed: Enroll bank (#7): install applet 0102: the card answered 6A84"
    )


def test_rejected_session_exits_3_with_the_reason_and_no_new_session() -> None:
    server = FakeServer([done()], fail=[SessionRejected("response integrity check failed: bad R-MAC")])
    code, text = run(server, cards(FakeCard(), FakeCard()))
    assert code == cli.EXIT_REJECTED and server.sessions == 1
    assert text.splitlines()[-1] == "agent: error: session rejected: response integrity check failed: bad R-MAC"


def test_409_after_a_retried_request_opens_a_new_session() -> None:
    server = FakeServer([done()], fail=[SessionRejected("exchange 2 out of order (expected 3)", after_retry=True)])
    code, text = run(server, cards(FakeCard(), FakeCard()))
    assert code == cli.EXIT_OK and server.sessions == 2
    assert "starting a new session" in text


def test_no_card_exits_4() -> None:
    def source(reader: str, timeout: float) -> FakeCard:
        assert timeout == 2.5
        raise NoCard(f"no card in reader {reader!r} after {timeout:g} s")

    code, text = run(FakeServer([]), source, "--timeout", "2.5")
    assert code == cli.EXIT_NO_CARD
    assert text.splitlines()[-1] == "agent: error: no card in reader 'Fake Reader' after 2.5 s"


def test_card_pulled_mid_session_then_presented_again() -> None:
    server = FakeServer([done()])
    code, text = run(server, cards(FakeCard(fail_after=2), FakeCard()))
    assert code == cli.EXIT_OK and server.sessions == 2
    assert "stopped answering; waiting for the card to start a new session" in text


def test_card_pulled_every_time_gives_up_after_max_sessions() -> None:
    code, text = run(FakeServer([]), cards(*(FakeCard(fail_after=1) for _ in range(2))), "--max-sessions", "2")
    assert code == cli.EXIT_NO_CARD and "stopped answering" in text.splitlines()[-1]


def test_work_still_pending_after_max_sessions_exits_7() -> None:
    pending = {"jobs": [], "pending": 1}
    server = FakeServer([pending, pending, pending])
    code, text = run(server, cards(FakeCard(), FakeCard(), FakeCard()))
    assert code == cli.EXIT_PENDING and server.sessions == 3
    assert text.splitlines()[-1] == "agent: error: 1 job(s) still pending after 3 sessions"


def test_pending_work_left_opens_another_session() -> None:
    server = FakeServer([{"jobs": [], "pending": 1}, done()])
    code, _text = run(server, cards(FakeCard(), FakeCard()))
    assert code == cli.EXIT_OK and server.sessions == 2


def test_bad_token_exits_6() -> None:
    server = FakeServer([], fail=[ServerRefused(401, "Invalid or revoked agent credential.")])
    server.open_session = lambda mode: (_ for _ in ()).throw(ServerRefused(401, "Invalid or revoked agent credential."))
    code, text = run(server, cards(FakeCard()))
    assert code == cli.EXIT_REFUSED
    assert text.splitlines()[-1] == (
        "agent: error: server refused the request: HTTP 401: Invalid or revoked agent credential."
    )


def test_server_unreachable_exits_5_after_retries() -> None:
    # the real HTTP client against a closed port, with the backoff pauses skipped
    code, text = run(None, cards(FakeCard()))
    assert code == cli.EXIT_UNREACHABLE
    assert text.count("retry") == 5
    assert text.splitlines()[-1].startswith("agent: error: server unreachable: http://127.0.0.1:9: ")
    assert text.splitlines()[-1].endswith("(6 tries)")


def test_token_from_environment_and_missing_token(monkeypatch) -> None:
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    out = io.StringIO()
    args = ["--server", "http://127.0.0.1:9", "--reader", "Fake Reader"]
    assert cli.main(args, card_source=cards(FakeCard()), stream=out) == cli.EXIT_USAGE
    assert "ECARD_AGENT_TOKEN" in out.getvalue()
    monkeypatch.setenv(cli.TOKEN_ENV, TOKEN)
    seen: list[str] = []

    def factory(url: str, token: str) -> FakeServer:
        seen.append(token)
        return FakeServer([done()])

    assert cli.main(args, card_source=cards(FakeCard()), server_factory=factory, stream=io.StringIO()) == 0
    assert seen == [TOKEN]


def test_python_dash_m_agent_usage() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "agent", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and "--reader" in r.stdout and "exit status" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "agent", "--reader", "x"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == cli.EXIT_USAGE and "--server" in r.stderr


@pytest.mark.parametrize("url", ["ftp://host", "not a url"])
def test_bad_server_url_is_a_usage_error(url: str) -> None:
    out = io.StringIO()
    code = cli.main(["--server", url, "--reader", "r", "--token", TOKEN], card_source=cards(), stream=out)
    assert code == cli.EXIT_USAGE and "http" in out.getvalue()


def test_interrupt_exits_130_with_a_message() -> None:
    def source(reader: str, timeout: float) -> FakeCard:
        raise KeyboardInterrupt

    code, text = run(FakeServer([]), source)
    assert code == cli.EXIT_INTERRUPTED and "interrupted" in text


@pytest.mark.django_db
def test_card_file_drives_an_emulated_card_in_process(tmp_path, settings) -> None:
    """`--card-file`: the demo without pcscd — the agent drives the cardsim state file itself."""
    import io

    from agent.cli import main
    from cards.models import CardJob
    from tests.otakit import ApiServer, build_ota_world, enroll

    settings.ECARD_CARDS_DIR = tmp_path
    world = build_ota_world()
    enroll(world)
    out = io.StringIO()
    code = main(
        ["--server", "http://testserver", "--card-file", world.card.state_file, "--token", world.token],
        server_factory=lambda _url, token: ApiServer(token),
        stream=out,
    )
    assert code == 0, out.getvalue()
    assert CardJob.objects.get(card=world.card).state == CardJob.State.DONE
    missing = main(
        ["--server", "http://testserver", "--card-file", str(tmp_path / "nope.json"), "--token", world.token],
        server_factory=lambda _url, token: ApiServer(token),
        stream=io.StringIO(),
    )
    assert missing != 0
