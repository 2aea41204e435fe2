"""The platform's client of a bank's key service (docs/keyservice.md). Pure Python, no Django:
mutual TLS with the platform's own client identity, the service's certificate pinned (the only
trust anchor; no hostname check, the pin is the identity), keep-alive connections, one per
thread, reconnected once when the service dropped an idle one.

Errors are :class:`BankServiceError` subclasses whose messages come from the service's error
document or name the transport failure; they never carry key material (the service returns none).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CLIENT_COMMON_NAME = "ecard-platform"


# --- errors ------------------------------------------------------------------------------


class BankServiceError(Exception):
    def __init__(self, message: str, *, code: str = "", whose: str = "") -> None:
        super().__init__(message)
        self.message, self.code, self.whose = message, code, whose


class BankServiceUnavailable(BankServiceError):
    """The service cannot be reached (refused, reset, timeout, TLS failure) or answered 503."""


class BankServiceRefused(BankServiceError):
    """403: the bank's policy refused the request."""


class BankServiceChannelError(BankServiceError):
    """409: the channel cannot continue (cryptogram, certificate chain, receipt, state)."""


class BankServiceRequestError(BankServiceError):
    """400 (or another 4xx): the request was malformed."""


_BY_STATUS: dict[int, type[BankServiceError]] = {
    400: BankServiceRequestError,
    403: BankServiceRefused,
    409: BankServiceChannelError,
    503: BankServiceUnavailable,
}


# --- the platform's identity ---------------------------------------------------------------


@dataclass(frozen=True)
class ClientIdentity:
    cert_path: Path
    key_path: Path
    certificate_pem: str
    sha256: str


CLIENT_CERTIFICATE_FILE = "platform-client.pem"


def ensure_client_identity(directory: Path) -> ClientIdentity:
    """The platform's TLS client key and self-signed certificate (CN=ecard-platform) in
    ``directory``, created on the first call (the key file 0600) and reused after."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CLIENT_CERTIFICATE_FILE, directory / "platform-client.key"
    if not (cert_path.exists() and key_path.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_COMMON_NAME)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key_pem)
        finally:
            os.close(fd)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = cert_path.read_text()
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return ClientIdentity(cert_path, key_path, pem, hashlib.sha256(der).hexdigest())


# --- answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    commands: list[bytes]
    state: str
    max_data_length: int


@dataclass(frozen=True)
class Unwrapped:
    data: bytes
    sw: int
    authenticated: bool


@dataclass(frozen=True)
class IntegrityFailure:
    message: str


@dataclass(frozen=True)
class Exchanged:
    responses: list[Unwrapped | IntegrityFailure]
    commands: list[bytes]
    state: str | None


# --- the client ----------------------------------------------------------------------------


class BankServiceClient:
    def __init__(
        self, endpoint: str, service_certificate_pem: str, identity: ClientIdentity, timeout: float = 5.0
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"the key service endpoint must be an https URL, got {endpoint!r}")
        self.host, self.port = url.hostname, url.port or 443
        self.timeout = timeout
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_3
        self._context.check_hostname = False  # the certificate is pinned: it is the identity
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._context.load_verify_locations(cadata=service_certificate_pem)
        self._context.load_cert_chain(identity.cert_path, identity.key_path)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"BankServiceClient(https://{self.host}:{self.port})"

    # --- transport --------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context)
            self._local.connection = connection
        return connection

    def __enter__(self) -> BankServiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close this thread's connection (the others close with their threads)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            connection = self._connection()
            reused = connection.sock is not None
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                status, raw = response.status, response.read()
                break
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                ssl.SSLEOFError,  # a restarted service: the old process's connection ends without close_notify
                ssl.SSLZeroReturnError,
            ) as exc:
                self.close()
                if attempt == 1 and reused:
                    continue  # the service closed an idle keep-alive connection: once more, fresh
                raise BankServiceUnavailable(f"the key service dropped the connection: {type(exc).__name__}") from None
            except ssl.SSLError as exc:
                self.close()
                raise BankServiceUnavailable(
                    f"TLS with the key service failed: {exc.reason or type(exc).__name__}"
                ) from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                raise BankServiceUnavailable(f"the key service is unreachable: {type(exc).__name__}") from None
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BankServiceUnavailable(f"the key service answered {status} without a JSON document") from None
        if status == 200 and isinstance(document, dict):
            return document
        error = document.get("error", {}) if isinstance(document, dict) else {}
        message = str(error.get("message", f"HTTP {status}"))
        kind = _BY_STATUS.get(status, BankServiceUnavailable if status >= 500 else BankServiceRequestError)
        raise kind(message, code=str(error.get("code", "")), whose=str(error.get("whose", "")))

    # --- the API ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def open_scp03(
        self,
        *,
        session: str,
        card: bytes,
        sd_aid: bytes,
        kvn: int,
        i: int,
        host_challenge: bytes,
        initialize_update_response: bytes,
    ) -> Opened:
        return _opened(
            self._request(
                "POST",
                "/v1/channels/open",
                {
                    "session": session,
                    "card": card.hex(),
                    "sd_aid": sd_aid.hex(),
                    "protocol": "scp03",
                    "kvn": kvn,
                    "i": i,
                    "host_challenge": host_challenge.hex(),
                    "initialize_update_response": initialize_update_response.hex(),
                },
            )
        )

    def open_scp11b(
        self, *, session: str, card: bytes, sd_aid: bytes, kid: int, kvn: int, certificates: bytes
    ) -> Opened:
        return _opened(
            self._request(
                "POST",
                "/v1/channels/open",
                {
                    "session": session,
                    "card": card.hex(),
                    "sd_aid": sd_aid.hex(),
                    "protocol": "scp11b",
                    "kid": kid,
                    "kvn": kvn,
                    "certificates": certificates.hex(),
                },
            )
        )

    def exchange(
        self, *, session: str, state: str, responses: list[bytes], commands: list[dict[str, Any]]
    ) -> Exchanged:
        """``commands``: ``{"apdu": bytes | hex}``, ``{"put_key": {"kvn": K, "replace": R}}``,
        ``{"put_dap_key": {}}`` or ``{"store_data": {"instance": hex, "sealed": base64, "format": "raw"}}``."""
        wire = [
            {"apdu": c["apdu"].hex() if isinstance(c.get("apdu"), bytes) else c["apdu"]} if "apdu" in c else c
            for c in commands
        ]
        answer = self._request(
            "POST",
            "/v1/channels/exchange",
            {"session": session, "state": state, "responses": [r.hex() for r in responses], "commands": wire},
        )
        unwrapped: list[Unwrapped | IntegrityFailure] = []
        for item in answer["responses"]:
            if "error" in item:
                unwrapped.append(IntegrityFailure(str(item.get("message", item["error"]))))
            else:
                unwrapped.append(
                    Unwrapped(bytes.fromhex(item["data"]), int(item["sw"], 16), bool(item["authenticated"]))
                )
        return Exchanged(unwrapped, [bytes.fromhex(c) for c in answer["commands"]], answer["state"])

    def dap_public_key(self) -> bytes:
        """The bank's DAP verification key (uncompressed P-256 point, ``04 || X || Y``)."""
        return _point(self._request("GET", "/v1/dap/public-key"))

    def dap_signature(self, lfdb_sha256: str) -> bytes:
        """The bank's DAP signature (``r || s``, 64 bytes) over a Load File Data Block hash (hex)
        the bank approved with ``sign-release``; :class:`BankServiceRefused` when it did not."""
        answer = self._request("POST", "/v1/dap/signature", {"lfdb_sha256": lfdb_sha256})
        try:
            signature = bytes.fromhex(str(answer["signature"]))
        except (KeyError, ValueError):
            raise BankServiceUnavailable("the key service answered without a signature") from None
        if len(signature) != 64:
            raise BankServiceUnavailable(f"the key service answered a {len(signature)}-byte signature, not 64")
        return signature

    def personalization_public_key(self) -> bytes:
        """The key the bank's back office seals personalisation data to (gp.sealed): a P-256 point."""
        return _point(self._request("GET", "/v1/personalization/public-key"))

    def journal(self, after: int = 0) -> dict[str, Any]:
        return self._request("GET", f"/v1/journal?after={int(after)}")

    def oce_csr(self) -> str:
        return str(self._request("POST", "/v1/oce/csr", {})["csr"])

    def install_oce_certificate(self, pem: str) -> dict[str, Any]:
        return self._request("POST", "/v1/oce/certificate", {"certificate": pem})


def _opened(answer: dict[str, Any]) -> Opened:
    return Opened([bytes.fromhex(c) for c in answer["commands"]], str(answer["state"]), int(answer["max_data_length"]))


def _point(answer: dict[str, Any]) -> bytes:
    try:
        point = bytes.fromhex(str(answer["point"]))
    except (KeyError, ValueError):
        raise BankServiceUnavailable("the key service answered without a public key") from None
    if len(point) != 65 or point[0] != 0x04:
        raise BankServiceUnavailable("the key service's public key is not an uncompressed P-256 point")
    return point
