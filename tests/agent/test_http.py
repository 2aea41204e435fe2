"""The agent's HTTP client against a local server that fails on purpose: what is retried, with
which pauses, and what is never retried."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent.http import HttpServer, ServerRefused, ServerUnreachable, SessionRejected, backoff_delays, mask_token

TOKEN = "eca_0123456789ab_s3cr3t-part-of-the-token"
OK_BODY = {"session": "s-1", "exchange": 1, "state": "open", "commands": [], "done": True, "progress": {}}


class Script:
    """What the server does for each request in turn: an HTTP status, "drop" (close without an
    answer), or 201/200 with the OK body once the list is used up."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = list(steps)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def next(self) -> Any:
        with self.lock:
            return self.steps.pop(0) if self.steps else 201


@pytest.fixture
def server() -> Iterator[Callable[[list[Any]], tuple[str, Script]]]:
    running: list[ThreadingHTTPServer] = []

    def start(steps: list[Any]) -> tuple[str, Script]:
        script = Script(steps)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                script.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                step = script.next()
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if step in (200, 201):
                    payload = json.dumps(OK_BODY).encode()
                    self.send_response(step)
                    self.send_header("Content-Type", "application/json")
                else:
                    payload = json.dumps({"title": "error", "status": step, "detail": f"refused with {step}"}).encode()
                    self.send_response(step)
                    self.send_header("Content-Type", "application/problem+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        running.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", script

    yield start
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


def client(url: str, sleeps: list[float], **kwargs: Any) -> HttpServer:
    return HttpServer(url, TOKEN, sleep=sleeps.append, timeout=5, **kwargs)


def test_backoff_doubles_from_half_a_second_to_eight() -> None:
    assert backoff_delays(6, 0.5, 8.0) == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert backoff_delays(8, 0.5, 8.0) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delays(1, 0.5, 8.0) == []


@pytest.mark.parametrize("failure", [503, 502, 504, "drop"])
def test_transient_failures_are_retried_with_backoff_then_succeed(server, failure: Any) -> None:
    url, script = server([failure, failure, failure])
    sleeps: list[float] = []
    http = client(url, sleeps)
    assert http.open_session("batch") == OK_BODY
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(script.requests) == 4 and http.attempts == 4
    assert all(r["path"] == "/api/v1/relay/sessions/" and r["body"] == {"mode": "batch"} for r in script.requests)
    assert all(r["auth"] == f"Agent {TOKEN}" for r in script.requests)


def test_gives_up_after_six_tries(server) -> None:
    url, script = server([503] * 10)
    sleeps: list[float] = []
    with pytest.raises(ServerUnreachable, match=r"HTTP 503 \(6 tries\)"):
        client(url, sleeps).open_session("batch")
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(script.requests) == 6


def test_connection_refused_is_retried_then_reported_unreachable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(ServerUnreachable) as info:
        client(f"http://127.0.0.1:{port}", sleeps, tries=3).open_session("batch")
    assert sleeps == [0.5, 1.0]
    assert "refused" in str(info.value).lower() and "(3 tries)" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_409_is_never_retried_and_carries_the_reason(server) -> None:
    url, script = server([409])
    sleeps: list[float] = []
    with pytest.raises(SessionRejected) as info:
        client(url, sleeps).exchange("abc", 3, ["9000"])
    assert info.value.reason == "refused with 409" and not info.value.after_retry
    assert sleeps == [] and len(script.requests) == 1
    assert script.requests[0]["path"] == "/api/v1/relay/sessions/abc/exchanges/"
    assert script.requests[0]["body"] == {"exchange": 3, "responses": ["9000"]}


def test_409_after_a_retry_is_flagged_as_a_possible_replay(server) -> None:
    url, _script = server(["drop", 409])
    with pytest.raises(SessionRejected) as info:
        client(url, []).exchange("abc", 3, ["9000"])
    assert info.value.after_retry


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500])
def test_other_errors_are_not_retried(server, status: int) -> None:
    url, script = server([status])
    sleeps: list[float] = []
    with pytest.raises(ServerRefused) as info:
        client(url, sleeps).open_session("batch")
    assert info.value.status == status and f"refused with {status}" in str(info.value)
    assert sleeps == [] and len(script.requests) == 1


def test_token_is_masked_in_repr() -> None:
    http = HttpServer("http://127.0.0.1:1", TOKEN)
    assert "s3cr3t" not in repr(http) and "eca_0123456789ab_***" in repr(http)
    assert mask_token("not-a-token") == "***"


def test_server_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpServer("file:///etc/passwd", TOKEN)


def test_exchanges_share_one_kept_alive_connection() -> None:
    """One TCP connection for a whole session (no handshake per exchange); a dropped one is replaced."""
    connections: list[Any] = []

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            connections.append(self.client_address)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"session": "s", "exchange": 1, "commands": [], "done": False}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        agent_server = HttpServer(f"http://127.0.0.1:{httpd.server_address[1]}", "eca_k_s", sleep=lambda _s: None)
        agent_server.open_session("batch")
        for number in range(1, 6):
            agent_server.exchange("s", number, ["9000"])
        assert len(connections) == 1, connections
        agent_server.close()
        agent_server.exchange("s", 6, ["9000"])
        assert len(connections) == 2
    finally:
        httpd.shutdown()
        httpd.server_close()
