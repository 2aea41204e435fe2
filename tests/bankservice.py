"""A bank's key service running in the test process (docs/keyservice.md).

:func:`running_bank_service` initialises a service directory whose token lives in the process's
SoftHSM2 (tests/softhsm.py), serves it over HTTPS on 127.0.0.1 in a daemon thread, and can stop
and start it again on the same directory and token (a service down, then back).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from gp.keys import StaticKeys
from issuers.bank_service_client import ClientIdentity, ensure_client_identity
from keyservice.cli import make_server
from keyservice.directory import Config, init_directory, open_token
from keyservice.policy import Policy
from keyservice.server import KeyServiceHTTPServer
from tests.softhsm import process_softhsm


@dataclass
class RunningService:
    directory: Path
    _server: KeyServiceHTTPServer | None = None
    _thread: threading.Thread | None = None
    _port: int = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._port}"

    @property
    def certificate_pem(self) -> str:
        return (self.directory / "tls" / "cert.pem").read_text()

    @property
    def server(self) -> KeyServiceHTTPServer:
        assert self._server is not None, "the service is stopped"
        return self._server

    def start(self) -> None:
        """Serve (again) on the same port: a restart has a new sealing key, the same token."""
        assert self._server is None, "already running"
        server = make_server(self.directory, "127.0.0.1", self._port)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="bank-key-service", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.service.token.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def approve_release(self, package_aid: bytes, lfdb_sha256: bytes, by: str) -> None:
        """What ``python -m keyservice approve-release`` does, and the running service sees it."""
        path = self.directory / "policy.json"
        policy = Policy.load(path)
        policy.approve(package_aid, lfdb_sha256, by)
        policy.save(path)
        if self._server is not None:
            self._server.service.policy.releases = policy.releases

    def derive_static_keys(self, card: bytes, sd_aid: bytes, kvn: int) -> StaticKeys:
        """The bank's keys for one SD, through the bank's token: only for tests that hold that
        token (e.g. "given Alpha's token, open Alpha's SSDs")."""
        token = open_token(self.directory, Config.load(self.directory))
        try:
            return token.derive_static_keys(card, sd_aid, kvn)
        finally:
            token.close()


@contextmanager
def running_bank_service(
    tmp_dir: Path, *, bank: str, aid_prefixes: list[bytes], card_ca_pem: bytes | str, platform_cert_pem: bytes | str
) -> Iterator[RunningService]:
    process_softhsm()  # the token goes into the process's SoftHSM2 token directory
    directory = tmp_dir / f"keyservice-{bank}"
    init_directory(
        directory,
        bank=bank,
        aid_prefixes=aid_prefixes,
        card_ca_pem=card_ca_pem.encode() if isinstance(card_ca_pem, str) else card_ca_pem,
        platform_cert_pem=platform_cert_pem.encode() if isinstance(platform_cert_pem, str) else platform_cert_pem,
        port=0,
        own_softhsm=False,
    )
    service = RunningService(directory)
    service.start()
    try:
        yield service
    finally:
        service.stop()


# --- pytest fixtures (registered in tests/conftest.py through pytest_plugins) --------------


@pytest.fixture
def platform_identity(tmp_path: Path) -> ClientIdentity:
    """The platform's TLS client identity (issuers.bank_service_client.ensure_client_identity)."""
    return ensure_client_identity(tmp_path / "platform-identity")


class BankServiceFactory(Protocol):
    def __call__(
        self, bank: str, *, aid_prefixes: list[bytes], card_ca_pem: bytes | str, platform_cert_pem: str | None = None
    ) -> RunningService: ...


@pytest.fixture
def bank_service_factory(tmp_path: Path, platform_identity: ClientIdentity) -> Iterator[BankServiceFactory]:
    """``bank_service_factory(bank, aid_prefixes=[...], card_ca_pem=...)``: a running key service
    pinning ``platform_identity`` (or ``platform_cert_pem``), stopped at the end of the test."""
    with ExitStack() as stack:

        def make(
            bank: str, *, aid_prefixes: list[bytes], card_ca_pem: bytes | str, platform_cert_pem: str | None = None
        ) -> RunningService:
            return stack.enter_context(
                running_bank_service(
                    tmp_path,
                    bank=bank,
                    aid_prefixes=aid_prefixes,
                    card_ca_pem=card_ca_pem,
                    platform_cert_pem=platform_cert_pem or platform_identity.certificate_pem,
                )
            )

        yield make
