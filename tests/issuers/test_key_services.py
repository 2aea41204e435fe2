"""Onboarding of the banks' key services (issuers.key_services): who registers a service, what
is refused and why, what is audited; the OCE certificate the agency's OCE CA issues; the API.

The tests that need a running key service use the real one (``bank_service_factory``); the
rest exercise the checks that run before any network call."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.test import Client
from django.utils import timezone

from audit.models import AuditEntry
from ecard.errors import ServiceError
from gp.scp11.certificates import KeyUsage, X509Certificate
from issuers import key_services, selectors
from issuers.custody.authorities import ca_identifier, ca_public_pem
from issuers.custody_models import KeySet
from issuers.models import BankKeyService
from tests.factories import World

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _client_dir(settings: Any, tmp_path: Path) -> None:
    # the directory of the platform_identity fixture (tests/bankservice.py), for the services to use it
    settings.ECARD_KEYSERVICE_CLIENT_DIR = tmp_path / "platform-identity"


def self_signed(common_name: str = "alpha key service", curve: ec.EllipticCurve | None = None) -> tuple[str, str]:
    """A self-signed certificate like a key service's (PEM, SHA-256 of the DER)."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def csr_pem(curve: ec.EllipticCurve | None = None) -> str:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alpha OCE")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# --------------------------------------------------------------------------- registration refusals


@pytest.mark.parametrize("username", ["alpha_admin", "alpha_op", "citizen1", "regulator", "agency_op", "outsider"])
def test_only_agency_admins_register(world: World, username: str) -> None:
    pem, _ = self_signed()
    with pytest.raises(ServiceError) as refused:
        key_services.register_key_service(
            organization=world.alpha,
            endpoint="https://127.0.0.1:8551",
            service_certificate_pem=pem,
            actor=world.users[username],
        )
    assert refused.value.code == "not_admin"
    assert not BankKeyService.objects.exists()
    assert not AuditEntry.objects.filter(action="key_service.registered").exists()


def test_only_banks_have_a_key_service(world: World) -> None:
    pem, _ = self_signed()
    for organization in (world.agency, world.regulator_org):
        with pytest.raises(ServiceError, match="only a bank"):
            key_services.register_key_service(
                organization=organization,
                endpoint="https://127.0.0.1:8551",
                service_certificate_pem=pem,
                actor=world.users["agency_admin"],
            )


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("", "required"),
        ("http://127.0.0.1:8551", "HTTPS only"),
        ("ftp://keys.alpha.example", "HTTPS only"),
        ("127.0.0.1:8551", "HTTPS only"),
        ("https://", "no host"),
        ("https://user:pw@keys.alpha.example", "user name or password"),
        ("https://keys.alpha.example/?x=1", "query"),
        ("https://keys.alpha.example:99999", "not a valid URL"),
        ("https://" + "a" * 300 + ".example", "300 characters"),
    ],
)
def test_bad_endpoints_are_refused(world: World, endpoint: str, message: str) -> None:
    pem, _ = self_signed()
    with pytest.raises(ServiceError, match=message) as refused:
        key_services.register_key_service(
            organization=world.alpha, endpoint=endpoint, service_certificate_pem=pem, actor=world.users["agency_admin"]
        )
    assert refused.value.field == "endpoint"
    assert not BankKeyService.objects.exists()


def test_endpoint_is_normalised() -> None:
    assert key_services.normalise_endpoint(" HTTPS://Keys.Alpha.example:8551/ ") == "https://keys.alpha.example:8551"
    assert key_services.normalise_endpoint("https://[::1]:8551") == "https://[::1]:8551"


def _key_pem() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (lambda: "", "required"),
        (lambda: "hello", "not a PEM certificate"),
        (lambda: self_signed()[0] + self_signed()[0], "exactly one certificate, found 2"),
        (lambda: self_signed()[0] + _key_pem(), "private key"),
        (lambda: csr_pem(), "exactly one certificate"),
        (lambda: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "does not parse"),
        (lambda: "x" * 20_000, "longer than"),
    ],
)
def test_bad_certificates_are_refused(world: World, pem: Any, message: str) -> None:
    with pytest.raises(ServiceError, match=message) as refused:
        key_services.register_key_service(
            organization=world.alpha,
            endpoint="https://127.0.0.1:8551",
            service_certificate_pem=pem(),
            actor=world.users["agency_admin"],
        )
    assert refused.value.field == "service_certificate"


def test_certificate_fingerprint_is_of_the_der() -> None:
    pem, sha256 = self_signed()
    _certificate, fingerprint = key_services.parse_service_certificate("\n  " + pem + "\n")
    assert fingerprint == sha256


def test_client_for_a_bank_without_service(world: World) -> None:
    with pytest.raises(ServiceError, match="no key service registered") as refused:
        key_services.client_for(world.alpha)
    assert refused.value.code == "state"


# --------------------------------------------------------------------------- OCE certificates


def test_oce_csr_checks() -> None:
    assert isinstance(key_services.check_oce_csr(csr_pem()).public_key(), ec.EllipticCurvePublicKey)
    with pytest.raises(ServiceError, match="not a P-256 key"):
        key_services.check_oce_csr(csr_pem(ec.SECP384R1()))
    with pytest.raises(ServiceError, match="does not parse"):
        key_services.check_oce_csr("garbage")
    # A request whose signature does not verify: another key's signature over the same body.
    good = x509.load_pem_x509_csr(csr_pem().encode())
    other = x509.load_pem_x509_csr(csr_pem().encode())
    der = good.public_bytes(serialization.Encoding.DER)
    forged_der = der.replace(good.signature, other.signature) if len(good.signature) == len(other.signature) else der
    if forged_der != der:
        forged = x509.load_der_x509_csr(forged_der).public_bytes(serialization.Encoding.PEM).decode()
        with pytest.raises(ServiceError, match="not signed by its key"):
            key_services.check_oce_csr(forged)


def test_oce_certificate_is_issued_under_the_agency_oce_ca(world: World) -> None:
    csr = key_services.check_oce_csr(csr_pem())
    today = dt.date(2026, 12, 5)
    certificate = key_services.issue_oce_certificate(
        organization=world.alpha, csr=csr, actor=world.users["alpha_admin"], today=today
    )
    ca_key = serialization.load_pem_public_key(ca_public_pem(world.agency, KeySet.Purpose.OCE_CA).encode())
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    ca_key.verify(
        certificate.signature,
        certificate.tbs_certificate_bytes,
        ec.ECDSA(certificate.signature_hash_algorithm),  # type: ignore[arg-type]
    )
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Alpha Bank OCE"
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_agreement and usage.digital_signature and not usage.key_cert_sign
    assert certificate.public_key() == csr.public_key()
    # what gp's SCP11 code reads in an OCE chain (Amendment F): key agreement, issued by the OCE CA
    parsed = X509Certificate.parse(certificate.public_bytes(serialization.Encoding.DER))
    assert parsed.allows(KeyUsage.KEY_AGREEMENT) and parsed.signed_by(ca_key)
    assert parsed.issuer_id == ca_identifier(ca_key)
    assert certificate.not_valid_before_utc.date() == today
    assert certificate.not_valid_after_utc.date() == today + dt.timedelta(days=365)
    entry = AuditEntry.objects.get(action="certificate.issued", details__kind="oce")
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert entry.details["organization"] == "alpha"
    assert entry.details["serial"] == format(certificate.serial_number, "X")
    assert entry.details["sha256"] == hashlib.sha256(der).hexdigest()
    assert dt.datetime.fromisoformat(entry.details["not_after"]) == certificate.not_valid_after_utc
    assert entry.organization_slug == "alpha"


@pytest.mark.parametrize("username", ["alpha_op", "alpha_auditor", "beta_admin", "agency_op", "regulator", "citizen1"])
def test_only_bank_or_agency_admins_rotate(world: World, username: str) -> None:
    with pytest.raises(ServiceError) as refused:
        key_services.rotate_oce_certificate(organization=world.alpha, actor=world.users[username])
    assert refused.value.code == "not_admin"


def test_rotate_without_service(world: World) -> None:
    with pytest.raises(ServiceError, match="no key service registered"):
        key_services.rotate_oce_certificate(organization=world.alpha, actor=world.users["alpha_admin"])


# --------------------------------------------------------------------------- status and errors


def test_error_text_is_short_and_carries_no_key_material() -> None:
    class Failure(Exception):
        code, whose = "unavailable", "service"
        message = (
            "token gone " + "AB" * 40 + " -----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY----- " + "x" * 400
        )

    text = key_services.error_text(Failure())
    assert text.startswith("unavailable (service): token gone")
    assert "ABAB" not in text and "MIGH" not in text
    assert len(text) <= 300


def test_status_selector(world: World) -> None:
    assert selectors.key_service_status(world.alpha)["registered"] is False
    pem, sha256 = self_signed()
    now = timezone.now()
    BankKeyService.objects.create(
        organization=world.alpha,
        endpoint="https://127.0.0.1:8551",
        service_certificate=pem,
        certificate_sha256=sha256,
        reachable=True,
        checked_at=now,
        journal_size=3,
        oce_not_after=now + dt.timedelta(days=20, hours=1),
    )
    status = selectors.key_service_status(world.alpha, now=now)
    assert status["registered"] and status["reachable"] and status["journal_size"] == 3
    assert status["certificate_sha256"] == sha256
    assert status["oce_days_left"] == 20 and status["oce_expires_soon"]
    BankKeyService.objects.filter(organization=world.alpha).update(oce_not_after=now + dt.timedelta(days=300))
    assert not selectors.key_service_status(world.alpha, now=now)["oce_expires_soon"]


# --------------------------------------------------------------------------- API (no service needed)


def _api(world: World, username: str) -> Client:
    client = Client()
    client.force_login(world.users[username])
    return client


@pytest.mark.parametrize(
    ("username", "status"),
    [
        ("agency_admin", 200),
        ("agency_op", 200),
        ("regulator", 200),
        ("alpha_admin", 200),
        ("alpha_auditor", 200),
        ("beta_admin", 404),
        ("citizen1", 404),
        ("outsider", 404),
    ],
)
def test_api_status_visibility(world: World, username: str, status: int) -> None:
    response = _api(world, username).get("/api/v1/organizations/alpha/key-service/")
    assert response.status_code == status, response.content
    if status == 200:
        assert response.json()["bank"] == "alpha" and response.json()["registered"] is False
        assert response.json()["endpoint"] is None


def test_api_register_refusals(world: World) -> None:
    pem, _ = self_signed()
    url = "/api/v1/organizations/alpha/key-service/"
    body = {"endpoint": "https://127.0.0.1:8551", "service_certificate": pem}
    for username in ("alpha_admin", "agency_op", "regulator"):
        response = _api(world, username).put(url, body, content_type="application/json")
        assert response.status_code == 403, (username, response.content)
    response = _api(world, "agency_admin").put(
        url, {**body, "endpoint": "http://127.0.0.1:8551"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert "HTTPS only" in response.json()["errors"]["endpoint"][0]
    response = _api(world, "agency_admin").put(
        url, {**body, "service_certificate": "not a pem"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "service_certificate" in response.json()["errors"]
    assert not BankKeyService.objects.exists()


def test_api_check_and_rotate_without_service(world: World) -> None:
    client = _api(world, "alpha_admin")
    response = client.post("/api/v1/organizations/alpha/key-service/check/")
    assert response.status_code == 409 and "no key service registered" in response.json()["detail"]
    response = client.post("/api/v1/organizations/alpha/key-service/oce-certificate/")
    assert response.status_code == 409
    assert _api(world, "alpha_auditor").post("/api/v1/organizations/alpha/key-service/check/").status_code == 403
    assert _api(world, "alpha_op").post("/api/v1/organizations/alpha/key-service/oce-certificate/").status_code == 403
    assert _api(world, "beta_admin").post("/api/v1/organizations/alpha/key-service/check/").status_code == 404


def test_api_platform_identity_refused_to_citizens_and_regulators(world: World) -> None:
    for username in ("citizen1", "regulator", "outsider"):
        assert _api(world, username).get("/api/v1/key-service/platform-identity/").status_code == 403


# --------------------------------------------------------------------------- with the real key service


def _alpha_service(world: World, bank_service_factory: Any, bank: str = "alpha") -> Any:
    return bank_service_factory(
        bank,
        aid_prefixes=[bytes.fromhex(World.ALPHA_RID + "01")],
        card_ca_pem=ca_public_pem(world.agency, KeySet.Purpose.CARD_CA),
    )


def _register(world: World, running: Any, username: str = "agency_admin") -> BankKeyService:
    return key_services.register_key_service(
        organization=world.alpha,
        endpoint=running.url,
        service_certificate_pem=running.certificate_pem,
        actor=world.users[username],
    )


def test_registration_pins_the_service_and_checks_it(world: World, bank_service_factory: Any) -> None:
    running = _alpha_service(world, bank_service_factory)
    service = _register(world, running)
    _certificate, sha256 = key_services.parse_service_certificate(running.certificate_pem)
    assert service.endpoint == running.url and service.certificate_sha256 == sha256
    assert service.registered_by == world.users["agency_admin"]
    assert service.reachable is True and service.last_error == "" and service.checked_at is not None
    assert service.journal_size is not None and service.journal_size >= 0
    registered = AuditEntry.objects.get(action="key_service.registered")
    before = registered.details.pop("ssd_template_scp", None)
    assert registered.details == {"endpoint": running.url, "sha256": sha256}
    # the bank's new SSDs are installed for SCP11 from now on: keyed by its service alone
    world.alpha.ssd_template.refresh_from_db()
    assert world.alpha.ssd_template.scp == 0x11
    assert before is None or before["to"] == 0x11
    assert registered.organization_slug == "alpha" and registered.actor_org_slug == "agency"
    assert AuditEntry.objects.filter(action="key_service.reachable", organization_slug="alpha").count() == 1


def test_re_registration_replaces_and_audits_both_fingerprints(world: World, bank_service_factory: Any) -> None:
    running = _alpha_service(world, bank_service_factory)
    wrong_pem, wrong_sha256 = self_signed("a mistake")
    first = key_services.register_key_service(
        organization=world.alpha,
        endpoint="https://127.0.0.1:1",  # nothing listens there
        service_certificate_pem=wrong_pem,
        actor=world.users["agency_admin"],
    )
    assert first.reachable is False and first.certificate_sha256 == wrong_sha256
    second = _register(world, running)  # the agency corrects both
    assert BankKeyService.objects.count() == 1
    assert second.endpoint == running.url and second.certificate_sha256 != wrong_sha256
    assert second.reachable is True and second.last_error == ""
    entry = AuditEntry.objects.filter(action="key_service.registered").order_by("pk").last()
    assert entry is not None
    assert entry.details["previous"] == {"endpoint": "https://127.0.0.1:1", "sha256": wrong_sha256}
    assert entry.details["sha256"] == second.certificate_sha256
    assert [e.action for e in AuditEntry.objects.filter(action__startswith="key_service.").order_by("pk")] == [
        "key_service.registered",
        "key_service.unreachable",
        "key_service.registered",
        "key_service.reachable",
    ]


def test_service_down_then_back(world: World, bank_service_factory: Any) -> None:
    running = _alpha_service(world, bank_service_factory)
    service = _register(world, running)
    running.stop()
    service = key_services.check_key_service(service)
    assert service.reachable is False
    assert service.last_error and len(service.last_error) <= 300
    assert "unreachable" in service.last_error or "unavailable" in service.last_error
    down = AuditEntry.objects.get(action="key_service.unreachable")
    assert down.outcome == "failure" and down.details["error"] == service.last_error
    # still down: no second entry (only transitions are audited)
    key_services.check_key_service(service)
    assert AuditEntry.objects.filter(action="key_service.unreachable").count() == 1
    running.start()
    from issuers.tasks import check_key_services

    assert check_key_services.delay().get() == 1  # the beat task checks every active service
    service.refresh_from_db()
    assert service.reachable is True and service.last_error == ""
    assert AuditEntry.objects.filter(action="key_service.reachable").count() == 2  # at registration, and now


def test_a_certificate_that_is_not_the_services_is_not_trusted(world: World, bank_service_factory: Any) -> None:
    running = _alpha_service(world, bank_service_factory)
    impostor_pem, _ = self_signed("alpha key service")
    service = key_services.register_key_service(
        organization=world.alpha,
        endpoint=running.url,
        service_certificate_pem=impostor_pem,
        actor=world.users["agency_admin"],
    )
    assert service.reachable is False and service.last_error
    assert AuditEntry.objects.filter(action="key_service.unreachable").exists()


def test_another_banks_service_is_not_reachable_as_this_bank(world: World, bank_service_factory: Any) -> None:
    running = _alpha_service(world, bank_service_factory, bank="beta")
    service = _register(world, running)
    assert service.reachable is False and "says it is bank 'beta'" in service.last_error


def test_oce_rotation_with_the_real_service(world: World, bank_service_factory: Any) -> None:
    running = _alpha_service(world, bank_service_factory)
    _register(world, running)
    service = key_services.rotate_oce_certificate(organization=world.alpha, actor=world.users["alpha_admin"])
    certificate = x509.load_pem_x509_certificate(service.oce_certificate.encode())
    ca_key = serialization.load_pem_public_key(ca_public_pem(world.agency, KeySet.Purpose.OCE_CA).encode())
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    hash_algorithm = certificate.signature_hash_algorithm
    assert hash_algorithm is not None
    ca_key.verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(hash_algorithm))
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Alpha Bank OCE"
    assert service.oce_not_after == certificate.not_valid_after_utc
    # the service reports the certificate it installed
    health = key_services.client_for(world.alpha).health()
    reported = health["oce_certificate"]
    assert int(reported["serial"], 16) == certificate.serial_number
    assert dt.datetime.fromisoformat(reported["not_after"]) == certificate.not_valid_after_utc
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert reported["sha256"] == hashlib.sha256(der).hexdigest()
    issued = AuditEntry.objects.get(action="certificate.issued", details__kind="oce")
    assert issued.details["serial"] == format(certificate.serial_number, "X")
    assert issued.details["sha256"] == reported["sha256"]
    assert issued.actor_user == world.users["alpha_admin"]
    assert AuditEntry.objects.filter(action="key_service.oce_installed").exists()
    # the next health check takes the expiry from the service
    checked = key_services.check_key_service(service)
    assert checked.oce_not_after == certificate.not_valid_after_utc
    status = selectors.key_service_status(world.alpha)
    assert status["oce_days_left"] in (364, 365) and status["oce_expires_soon"] is False
    # a restarted service still reports it (kept in its directory; a certificate is public)
    running.stop()
    running.start()
    assert key_services.client_for(world.alpha).health()["oce_certificate"] == reported


def test_rotation_when_the_service_is_down_is_a_clear_error(world: World, bank_service_factory: Any) -> None:
    running = _alpha_service(world, bank_service_factory)
    _register(world, running)
    running.stop()
    with pytest.raises(ServiceError, match="did not make a certificate request") as refused:
        key_services.rotate_oce_certificate(organization=world.alpha, actor=world.users["agency_admin"])
    assert refused.value.code == "unavailable"
    assert not AuditEntry.objects.filter(action="certificate.issued", details__kind="oce").exists()


def test_api_with_the_real_service(world: World, bank_service_factory: Any, platform_identity: Any) -> None:
    running = _alpha_service(world, bank_service_factory)
    url = "/api/v1/organizations/alpha/key-service/"
    body = {"endpoint": running.url, "service_certificate": running.certificate_pem}
    response = _api(world, "agency_admin").put(url, body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["reachable"] is True and response.json()["endpoint"] == running.url
    alpha = _api(world, "alpha_admin")
    response = alpha.post(url + "oce-certificate/")
    assert response.status_code == 200, response.content
    assert response.json()["oce_not_after"] is not None and response.json()["oce_expires_soon"] is False
    running.stop()
    response = _api(world, "alpha_op").post(url + "check/")
    assert response.status_code == 200
    assert response.json()["reachable"] is False and response.json()["last_error"]
    response = alpha.post(url + "oce-certificate/")
    assert response.status_code == 503 and response["Content-Type"] == "application/problem+json"
    identity = alpha.get("/api/v1/key-service/platform-identity/").json()
    assert identity == {"certificate": platform_identity.certificate_pem, "sha256": platform_identity.sha256}


def test_platform_identity_unavailable_is_an_error_not_a_crash(world: World, settings: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings.ECARD_KEYSERVICE_CLIENT_DIR = blocker / "client"
    pem, _ = self_signed()
    service = key_services.register_key_service(
        organization=world.alpha,
        endpoint="https://127.0.0.1:1",
        service_certificate_pem=pem,
        actor=world.users["agency_admin"],
    )
    assert service.reachable is False and "client identity is not available" in service.last_error
    with pytest.raises(ServiceError, match="client identity is not available") as refused:
        key_services.rotate_oce_certificate(organization=world.alpha, actor=world.users["agency_admin"])
    assert refused.value.code == "unavailable"
