"""The vpcd client protocol against a fake vpcd (no pcscd needed)."""

from __future__ import annotations

import socket
import threading
import time

from cardsim.card import Card
from cardsim.state import new_state
from cardsim.vpcd import handle_connection, serve


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def _read(sock: socket.socket) -> bytes:
    head = sock.recv(2)
    n = int.from_bytes(head, "big")
    buf = b""
    while len(buf) < n:
        buf += sock.recv(n - len(buf))
    return buf


def test_protocol_with_a_fake_vpcd() -> None:
    card = Card(new_state(cin=bytes(8)))
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(card, "127.0.0.1", port, stop), daemon=True)
    thread.start()
    conn, _ = server.accept()
    conn.settimeout(5)
    conn.sendall(_frame(b"\x01"))  # power on: no answer
    conn.sendall(_frame(b"\x04"))  # get ATR
    assert _read(conn) == card.atr
    conn.sendall(_frame(bytes.fromhex("00A4040000")))
    rapdu = _read(conn)
    assert rapdu[-2:] == b"\x90\x00" and rapdu[:2] == b"\x6f\x45"
    conn.sendall(_frame(b"\x02"))  # reset
    conn.sendall(_frame(b"\x00"))  # power off
    conn.sendall(_frame(bytes.fromhex("80CA9F7F00")))  # a card without power is powered up by the APDU
    assert _read(conn)[-2:] == b"\x90\x00"
    conn.close()  # card pulled: serve reconnects
    conn2, _ = server.accept()
    conn2.settimeout(5)
    conn2.sendall(_frame(b"\x04"))
    assert _read(conn2) == card.atr
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    conn2.close()
    server.close()


def test_unaccepted_connection_is_dropped() -> None:
    card = Card(new_state(cin=bytes(8)))
    a, b = socket.socketpair()
    start = time.monotonic()
    handle_connection(a, card, threading.Event(), first_message_timeout=0.5)  # vpcd never speaks
    assert 0.4 < time.monotonic() - start < 5
    a.close()
    b.close()
