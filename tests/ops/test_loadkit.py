"""The load generator's client (bench/loadkit.py): several servers get every other request, over
one kept-alive connection each, and an in-memory card is the same card as its state file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.loadkit import Feeder, KeepAliveRelay, MemoryCard, split_urls


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server: Any = self.server
        server.hits.append((json.loads(body), self.client_address[1]))
        payload = json.dumps({"served_by": server.name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def two_servers() -> Any:
    servers = []
    for name in ("a", "b"):
        server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.name, server.hits = name, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_every_request_goes_to_the_next_server(two_servers: list[Any]) -> None:
    urls = ",".join(f"http://127.0.0.1:{s.server_address[1]}" for s in two_servers)
    relay = KeepAliveRelay(urls, "token", context=None)
    served = [relay.post("/x", {"n": n}, 200)["served_by"] for n in range(6)]
    relay.close()
    assert served == ["a", "b", "a", "b", "a", "b"]  # per request, not per agent or per session
    assert relay.requests_by_server == [3, 3]
    for server in two_servers:
        assert len({port for _body, port in server.hits}) == 1  # one kept-alive connection each
    # A second agent starts on the other server.
    other = KeepAliveRelay(urls, "token", context=None, start=1)
    assert other.post("/x", {}, 200)["served_by"] == "b"
    other.close()


def test_split_urls() -> None:
    assert split_urls("https://h:1, https://h:2,") == ["https://h:1", "https://h:2"]
    assert split_urls(["https://h:1"]) == ["https://h:1"]
    with pytest.raises(ValueError):
        split_urls(" , ")


def test_a_memory_card_is_written_back_once(tmp_path: Path) -> None:
    from cardsim import store
    from cardsim.transport import InProcessCard

    path = tmp_path / "card.json"
    subprocess.run([sys.executable, "-m", "cardsim", "init", str(path)], check=True, capture_output=True)
    before = path.read_bytes()
    card = MemoryCard(path).present()
    # A SELECT changes nothing persistent: nothing is written.
    assert card.transmit(bytes.fromhex("00A4040008A000000151000000"))[-2:] == b"\x90\x00"
    card.save()
    assert path.read_bytes() == before
    assert card.present().card is card.card  # the same card across presentations
    card.dirty = True
    card.save()
    assert store.load(path) == InProcessCard(path).state


def test_a_feeder_counts_its_own_cpu_inside_the_window_only() -> None:
    feeder = Feeder("nobody")
    now = time.time()
    feeder.window = (now + 0.05, now + 0.3)
    feeder._mark_window()  # before the window: nothing counted yet
    assert feeder.window_cpu == 0.0 and feeder._cpu_from is None
    _burn_until(now + 0.05)
    opened_before = time.thread_time()
    feeder._mark_window()  # the window opens
    opened_after = time.thread_time()
    _burn_until(now + 0.3)
    assert feeder.window_cpu == 0.0  # not closed yet
    closed_before = time.thread_time()
    feeder._mark_window()
    closed_after = time.thread_time()
    counted = feeder.window_cpu
    assert closed_before - opened_after <= counted <= closed_after - opened_before
    assert counted > 0
    _burn_until(time.time() + 0.1)  # after the window: no longer counted
    feeder._mark_window()
    assert feeder.window_cpu == counted


def _burn_until(deadline: float) -> None:
    while time.time() < deadline:
        sum(range(1000))
