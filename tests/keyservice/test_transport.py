"""Mutual TLS with pinned certificates (docs/keyservice.md, "Transport"), and the service's
answers to a caller that gets the request wrong: JSON errors, never a stack trace."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path

import pytest

from issuers.bank_service_client import (
    BankServiceClient,
    BankServiceRequestError,
    BankServiceUnavailable,
    ClientIdentity,
    ensure_client_identity,
)
from keyservice.token import TokenUnavailable
from tests.bankservice import BankServiceFactory, RunningService
from tests.keyservice.cards import BANK_PREFIX


def _context(alpha: RunningService, identity: ClientIdentity | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=alpha.certificate_pem)
    if identity is not None:
        context.load_cert_chain(identity.cert_path, identity.key_path)
    return context


def _get_health(alpha: RunningService, identity: ClientIdentity | None) -> int:
    port = int(alpha.url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=_context(alpha, identity))
    try:
        connection.request("GET", "/v1/health")
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_client_without_the_pinned_certificate_is_refused_in_the_handshake(
    alpha: RunningService, platform_identity: ClientIdentity, tmp_path: Path
) -> None:
    assert _get_health(alpha, platform_identity) == 200
    stranger = ensure_client_identity(tmp_path / "stranger")  # same CN, another key: not pinned
    for identity in (None, stranger):
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _get_health(alpha, identity)
    with (
        BankServiceClient(alpha.url, alpha.certificate_pem, stranger) as client,
        pytest.raises(BankServiceUnavailable, match=r"TLS|connection"),
    ):
        client.health()


def test_the_client_refuses_a_service_with_another_certificate(
    alpha: RunningService, bank_service_factory: BankServiceFactory, platform_identity: ClientIdentity
) -> None:
    impostor = bank_service_factory("impostor", aid_prefixes=[BANK_PREFIX], card_ca_pem=_card_ca(alpha))
    # The platform pinned alpha's certificate; the impostor (with the platform pinned) answers.
    with (
        BankServiceClient(impostor.url, alpha.certificate_pem, platform_identity) as client,
        pytest.raises(BankServiceUnavailable, match="TLS"),
    ):
        client.health()


def _card_ca(alpha: RunningService) -> bytes:
    return (alpha.directory / "card-ca.pem").read_bytes()


def test_malformed_requests_get_json_errors(client: BankServiceClient, alpha: RunningService) -> None:
    with pytest.raises(BankServiceRequestError, match="'protocol'") as error:
        client._request("POST", "/v1/channels/open", {"session": "s", "card": "00", "sd_aid": "F0414C504801"})
    assert error.value.code == "malformed" and error.value.whose == "platform"
    with pytest.raises(BankServiceRequestError, match="put_key"):
        client.exchange(session="s", state="x", responses=[], commands=[{"put_key": {"kvn": 999}}])
    with pytest.raises(BankServiceRequestError, match="no GET /v1/nothing"):
        client._request("GET", "/v1/nothing")


def test_a_request_over_the_size_limit_is_refused(alpha: RunningService, platform_identity: ClientIdentity) -> None:
    port = int(alpha.url.rsplit(":", 1)[1])
    context = _context(alpha, platform_identity)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"POST /v1/channels/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        response = http.client.HTTPResponse(tls)
        response.begin()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "too_large"


def test_health_reports_the_bank_the_token_and_the_journal(client: BankServiceClient) -> None:
    health = client.health()
    assert health["bank"] == "alpha" and health["status"] == "ok" and health["token"].startswith("bank-alpha-")
    assert health["journal"] == {"size": 0, "head": "0" * 64} and health["oce_certificate"] is None


def test_the_client_reconnects_once_when_the_service_dropped_its_idle_connection(
    client: BankServiceClient, alpha: RunningService
) -> None:
    assert client.health()["status"] == "ok"
    alpha.server.drop_connections()  # as a service does with idle keep-alive connections
    assert client.health()["status"] == "ok"


def test_an_internal_error_is_a_json_document_without_a_trace(
    client: BankServiceClient, alpha: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(alpha.server.service, "health", broken)
    with pytest.raises(BankServiceUnavailable, match="internal error") as error:
        client.health()
    assert error.value.code == "internal" and "secret" not in error.value.message


def test_a_malformed_http_request_gets_a_json_error(alpha: RunningService, platform_identity: ClientIdentity) -> None:
    port = int(alpha.url.rsplit(":", 1)[1])
    context = _context(alpha, platform_identity)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
        response = http.client.HTTPResponse(tls)
        response.begin()
        assert response.status == 431
        assert json.loads(response.read())["error"]["whose"] == "platform"


def test_a_token_that_cannot_serve_is_503_whose_service(
    client: BankServiceClient, alpha: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> list[int]:
        raise TokenUnavailable("cannot open the token 'bank-alpha': TokenNotPresent")

    monkeypatch.setattr(alpha.server.service.token, "key_versions", unavailable)
    with pytest.raises(BankServiceUnavailable, match="TokenNotPresent") as error:
        client.health()
    assert error.value.code == "token" and error.value.whose == "service"


def test_the_client_checks_the_keys_and_signatures_it_is_given(
    client: BankServiceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service answering a malformed point or signature is a service failure, not a key."""
    answers: list[dict[str, object]] = [{"point": "04" + "00" * 10}, {"point": "zz"}, {}, {"signature": "00" * 63}]
    monkeypatch.setattr(client, "_request", lambda *args, **kwargs: answers.pop(0))
    with pytest.raises(BankServiceUnavailable, match="not an uncompressed P-256 point"):
        client.dap_public_key()
    with pytest.raises(BankServiceUnavailable, match="without a public key"):
        client.personalization_public_key()
    with pytest.raises(BankServiceUnavailable, match="without a signature"):
        client.dap_signature("ab" * 32)
    with pytest.raises(BankServiceUnavailable, match="63-byte signature"):
        client.dap_signature("ab" * 32)
