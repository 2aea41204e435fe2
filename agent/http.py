"""The relay API over HTTP(S), standard library only (``http.client``), on one kept-alive
connection per agent run (a TLS handshake per exchange would cost a round trip each time).

``HttpServer`` is the :class:`agent.core.Server` the command line uses: JSON bodies, the device
credential in ``Authorization: Agent <token>``, and retries with exponential backoff on what a
flaky network produces (connection errors, timeouts, 502/503/504) — never on 409 (the server
closed the session) or any other 4xx (the request itself is wrong; repeating it cannot help).

A retried exchange may be one the server already processed (the answer was lost on the way
back); the server then refuses the repeat as out of order and closes the session. Such a 409 is
raised with ``after_retry=True`` so the caller can treat it as a lost connection (open a new
session; the card's jobs resume from its registry) rather than as an integrity failure.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from agent.core import RelayError

RETRY_STATUS = frozenset({502, 503, 504})
DEFAULT_TRIES = 6
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 8.0
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "ecard-agent/1"


class ServerUnreachable(RelayError):
    """No answer from the server after every retry."""


class ServerRefused(RelayError):
    """The server answered with a client error other than 409 (bad token, malformed request...)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")
        self.status = status
        self.detail = detail


class SessionRejected(RelayError):
    """409: the server closed the session (integrity or protocol failure); ``reason`` says why."""

    def __init__(self, reason: str, *, after_retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_retry = after_retry


def mask_token(token: str) -> str:
    """A token fit for messages: the public key id at most, never the secret part."""
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[1]:
        return f"{parts[0]}_{parts[1]}_***"
    return "***"


def backoff_delays(tries: int, first: float, cap: float) -> list[float]:
    """Pauses between ``tries`` attempts: first, doubling, at most ``cap`` (0.5, 1, 2, 4, 8 by default)."""
    return [min(first * (2**n), cap) for n in range(max(tries - 1, 0))]


def _detail(body: bytes) -> str:
    """The ``detail`` of an RFC 7807 problem document, or the start of the body."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(data, dict):
        detail = data.get("detail") or data.get("title")
        if detail:
            return str(detail)[:500]
    return text.strip()[:200]


class HttpServer:
    """The relay API of the platform at ``base_url`` (e.g. ``https://ecard.example``)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tries: int = DEFAULT_TRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[int, float, str], None] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"server URL must be http(s)://host[:port]: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._scheme, self._netloc, self._prefix = parsed.scheme, parsed.netloc, parsed.path.rstrip("/")
        self._connection: http.client.HTTPConnection | None = None
        self._token = token
        self.timeout = timeout
        self.tries = max(1, tries)
        self.delays = backoff_delays(self.tries, backoff, max_backoff)
        self.sleep = sleep
        self.on_retry = on_retry
        self.requests = 0  # HTTP requests that got an answer (round trips)
        self.attempts = 0  # including failed attempts

    def __repr__(self) -> str:
        return f"HttpServer({self.base_url!r}, token={mask_token(self._token)!r})"

    # -- agent.core.Server
    def open_session(self, mode: str) -> dict[str, Any]:
        return self._post("/api/v1/relay/sessions/", {"mode": mode})

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        path = f"/api/v1/relay/sessions/{urllib.parse.quote(str(session), safe='')}/exchanges/"
        return self._post(path, {"exchange": number, "responses": responses})

    # -- transport
    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._scheme == "https":
                # The system's trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured).
                self._connection = http.client.HTTPSConnection(
                    self._netloc, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                self._connection = http.client.HTTPConnection(self._netloc, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _send(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """One POST on the kept-alive connection; a connection that failed is dropped."""
        connection = self._connect()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, application/problem+json",
            "Authorization": f"Agent {self._token}",
            "User-Agent": USER_AGENT,
        }
        try:
            connection.request("POST", self._prefix + path, body=json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, payload

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last = ""
        for attempt in range(self.tries):
            if attempt:
                delay = self.delays[attempt - 1]
                if self.on_retry is not None:
                    self.on_retry(attempt, delay, last)
                self.sleep(delay)
            self.attempts += 1
            try:
                status, payload = self._send(path, body)
            except (http.client.HTTPException, OSError) as exc:
                last = str(exc) or type(exc).__name__
                if isinstance(exc, socket.timeout | TimeoutError):
                    last = f"no answer within {self.timeout:g} s"
                continue
            if status in RETRY_STATUS:
                last = f"HTTP {status}"
                continue
            self.requests += 1
            if status == 409:
                raise SessionRejected(_detail(payload) or "session rejected", after_retry=attempt > 0)
            if status >= 400:
                raise ServerRefused(status, _detail(payload))
            try:
                data = json.loads(payload)
            except ValueError:
                raise ServerRefused(status, "the server's answer is not JSON") from None
            if not isinstance(data, dict):
                raise ServerRefused(status, "the server's answer is not a JSON object")
            return data
        raise ServerUnreachable(f"{self.base_url}: {last} ({self.tries} tries)")
