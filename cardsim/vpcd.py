"""vpcd client: the card side of vsmartcard's virtual reader (I/O adapter, may use sockets).

Protocol (vsmartcard ``vpcd``): the card connects as a TCP client to the reader's port
(35963 for "Virtual PCD 00 00"); every message in either direction is a 2-byte big-endian
length followed by the payload. A 1-byte payload from vpcd is a control message —
``00`` power off, ``01`` power on, ``02`` reset, ``04`` get ATR (answered with the ATR) — any
longer payload is a command APDU, answered with the response APDU. Power on/off/reset get no
answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from cardsim.card import Card

log = logging.getLogger("cardsim.vpcd")

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0, 1, 2, 4
FIRST_MESSAGE_TIMEOUT = 10.0  # seconds


def _recv_exact(sock: socket.socket, n: int, stop: threading.Event, deadline: float | None = None) -> bytes | None:
    buf = b""
    while len(buf) < n:
        if stop.is_set() or (deadline is not None and not buf and time.monotonic() > deadline):
            return None
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            continue
        if not chunk:
            return None
        buf += chunk
    return buf


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(2, "big") + payload)


def handle_connection(
    sock: socket.socket, card: Card, stop: threading.Event, first_message_timeout: float | None = FIRST_MESSAGE_TIMEOUT
) -> None:
    """Serve one vpcd connection until it closes or ``stop`` is set.

    vpcd talks to an accepted card at once (power on, ATR). A connection that hears nothing for
    ``first_message_timeout`` seconds is taken as never accepted (vpcd can leave a client queued
    after the previous one died) and dropped, so that ``serve`` connects afresh.
    """
    sock.settimeout(0.25)
    deadline = time.monotonic() + first_message_timeout if first_message_timeout else None
    while not stop.is_set():
        head = _recv_exact(sock, 2, stop, deadline)
        deadline = None
        if head is None:
            return
        n = int.from_bytes(head, "big")
        payload = _recv_exact(sock, n, stop) if n else b""
        if payload is None:
            return
        if len(payload) == 1:
            ctrl = payload[0]
            if ctrl == CTRL_OFF:
                card.power_off()
            elif ctrl == CTRL_ON:
                card.power_on()
            elif ctrl == CTRL_RESET:
                card.reset()
            elif ctrl == CTRL_ATR:
                _send(sock, card.atr)
            continue
        if not payload:
            continue
        rapdu = card.transmit(payload)
        if log.isEnabledFor(logging.DEBUG):  # header and status word only: never data (keys, secrets)
            log.debug("C-APDU %s -> SW %s", payload[:4].hex().upper(), rapdu[-2:].hex().upper())
        _send(sock, rapdu)


def serve(card: Card, host: str, port: int, stop: threading.Event, retry: float = 0.5) -> None:
    """Connect to vpcd and serve the card; reconnect whenever the connection drops, until ``stop``."""
    card.power_on()
    while not stop.is_set():
        try:
            sock = socket.create_connection((host, port), timeout=2)
        except OSError as exc:
            log.info("vpcd %s:%d not reachable (%s); retrying", host, port, exc)
            stop.wait(retry)
            continue
        log.info("connected to vpcd %s:%d", host, port)
        try:
            handle_connection(sock, card, stop)
        except OSError as exc:
            log.info("vpcd connection lost: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        card.power_off()
        if not stop.is_set():
            time.sleep(min(retry, 0.2))
