"""A bank's key service as its own process (``python -m keyservice serve DIR``), as the demo and
prod-local run it: its own SoftHSM2 token directory, its own port."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port_pair() -> int:
    """A port P with P and P + 1 free (the demo's two banks)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no two consecutive free ports")


class ServedKeyService:
    def __init__(self, directory: Path, log: Path) -> None:
        self.directory, self.log = directory, log
        self.port = int(json.loads((directory / "config.json").read_text())["port"])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServedKeyService:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keyservice", "serve", str(self.directory)],
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the key service did not listen: {self.log.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.proc = None


@contextmanager
def serving(directory: Path, log: Path) -> Iterator[ServedKeyService]:
    service = ServedKeyService(directory, log).start()
    try:
        yield service
    finally:
        service.stop()


@contextmanager
def demo_key_services(directory: Path) -> Iterator[list[ServedKeyService]]:
    """Every demo bank's key service under ``directory`` (what seed_demo made), each its own
    process, as ``make demo`` runs them."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield [
            stack.enter_context(serving(path.parent, directory / f"{path.parent.name}.log"))
            for path in sorted(directory.glob("*/config.json"))
        ]
