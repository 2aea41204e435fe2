"""HTTPS front of the key service: stdlib ``ThreadingHTTPServer`` behind TLS 1.3 with the
platform's pinned client certificate as the only trust anchor (docs/keyservice.md, "Transport").

Errors are the JSON documents of the contract; an unexpected failure is logged here and the
caller gets a generic 500 document, never a stack trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from keyservice.channels import KeyService, ServiceError
from keyservice.oce import OceAuthority
from keyservice.policy import Policy
from keyservice.token import TokenUnavailable

logger = logging.getLogger("keyservice")
MAX_BODY = 256 * 1024  # a LOAD of a large package in one call fits; more is refused (413)


def tls_context(cert: Path, key: Path, platform_cert: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(platform_cert))  # the pinned certificate, nothing else
    return context


class _Handler(BaseHTTPRequestHandler):
    server: KeyServiceHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive for the platform's pooled connections
    server_version = "keyservice"
    sys_version = ""

    timeout = 30  # seconds a connection may stall mid-request (or idle between requests)

    def setup(self) -> None:
        # The TLS handshake, here in the connection's own thread, under the same timeout.
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, headers too long) as JSON documents too."""
        self.close_connection = True
        self._error(code, "malformed" if code < 500 else "internal", "platform" if code < 500 else "service",
                    message or "malformed HTTP request")  # fmt: skip

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, whose: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message, "whose": whose}})

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise ServiceError(400, "malformed", "platform", "bad Content-Length") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise ServiceError(413, "too_large", "platform", f"request body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServiceError(400, "malformed", "platform", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ServiceError(400, "malformed", "platform", "the body must be a JSON object")
        return body

    def _run(self, method: str) -> None:
        service = self.server.service
        url = urlsplit(self.path)
        try:
            with self.server.lock:
                self.server.refresh_policy()
                if method == "GET" and url.path == "/v1/health":
                    self._send(200, service.health())
                elif method == "GET" and url.path == "/v1/journal":
                    after = parse_qs(url.query).get("after", ["0"])[0]
                    if not after.isdigit():
                        raise ServiceError(400, "malformed", "platform", "'after' must be a number")
                    self._send(200, service.journal_page(int(after)))
                elif method == "POST" and url.path == "/v1/channels/open":
                    self._send(200, service.open(self._body()))
                elif method == "POST" and url.path == "/v1/channels/exchange":
                    self._send(200, service.exchange(self._body()))
                elif method == "GET" and url.path == "/v1/dap/public-key":
                    self._send(200, service.dap_public_key())
                elif method == "POST" and url.path == "/v1/dap/signature":
                    self._send(200, service.dap_signature(self._body()))
                elif method == "GET" and url.path == "/v1/personalization/public-key":
                    self._send(200, service.personalization_public_key())
                elif method == "POST" and url.path == "/v1/oce/csr":
                    self._body()
                    self._send(200, {"csr": self.server.oce.new_request()})
                elif method == "POST" and url.path == "/v1/oce/certificate":
                    pem = self._body().get("certificate")
                    if not isinstance(pem, str):
                        raise ServiceError(400, "malformed", "platform", "'certificate' must be a PEM string")
                    service.oce_certificate = self.server.oce.install(pem)
                    self._send(200, {"oce_certificate": service.oce_certificate})
                else:
                    raise ServiceError(404, "not_found", "platform", f"no {method} {url.path}")
        except ServiceError as exc:
            self._send(exc.status, exc.as_json())
        except TokenUnavailable as exc:
            self._error(503, "token", "service", str(exc))
        except Exception:
            logger.exception("internal error on %s %s", method, url.path)
            self._error(500, "internal", "service", "internal error (see the service's log)")

    def do_GET(self) -> None:
        self._run("GET")

    def do_POST(self) -> None:
        self._run("POST")


class KeyServiceHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], service: KeyService, context: ssl.SSLContext, directory: Path | None = None
    ) -> None:
        super().__init__(address, _Handler)
        self.service = service
        self.oce = OceAuthority(
            service.token, service.policy.bank, directory / "oce-certificate.pem" if directory else None
        )
        if service.oce_certificate is None:
            service.oce_certificate = self.oce.installed()
        self.context = context
        # One request at a time through the service: the token session and the journal are
        # shared, and the platform relays one card at a time per bank anyway.
        self.lock = threading.Lock()
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()
        self._policy_path = directory / "policy.json" if directory else None
        self._policy_stamp = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        if self._policy_path is None:
            return None
        try:
            status = self._policy_path.stat()
        except FileNotFoundError:
            return None
        return status.st_mtime_ns, status.st_size

    def refresh_policy(self) -> None:
        """The bank's sign-offs (``approve-release`` writes policy.json) apply from the next
        request, without a restart."""
        stamp = self._stamp()
        if stamp is not None and stamp != self._policy_stamp and self._policy_path is not None:
            self.service.policy = Policy.load(self._policy_path)
            self._policy_stamp = stamp

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        # The handshake runs in the handler thread (do_handshake_on_connect), so a client that
        # stalls or is refused never blocks the accept loop.
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._connections_lock:
            self._connections.add(tls)
        return tls, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening and end the keep-alive connections too: a stopped service is down."""
        super().server_close()
        self.drop_connections()

    def drop_connections(self) -> None:
        """End every open connection (the clients reconnect)."""
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.info("connection from %s ended: TLS or socket error", client_address, exc_info=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"https://{host!s}:{port}"
