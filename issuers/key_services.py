"""Onboarding of the banks' key services (docs/keyservice.md, "Onboarding"): the agency admits a
bank's service (its endpoint and the TLS certificate the platform pins), the platform checks that
it answers, and issues the bank's SCP11 OCE certificate under the agency's OCE CA.

The network calls (through :mod:`issuers.bank_service_client`, mutual TLS with pinned
certificates) never run inside a database transaction: a slow or dead service must not hold
locks. Each change is then written with its audit entry in one short transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import record_event
from ecard.errors import ServiceError
from gp.scp11.constants import SCP11_ID
from issuers import roles
from issuers.bank_service_client import (
    CLIENT_CERTIFICATE_FILE,
    BankServiceClient,
    BankServiceError,
    BankServiceRefused,
    BankServiceUnavailable,
    ClientIdentity,
    ensure_client_identity,
)
from issuers.custody.authorities import agency_ca
from issuers.custody_models import KeySet
from issuers.models import BankDapKey, BankKeyService, Membership, Organization, SsdTemplate

logger = logging.getLogger(__name__)

MAX_PEM_CHARS = 16_384
MAX_ERROR_CHARS = 300
OCE_VALIDITY_DAYS = 365
EXPIRY_WARNING_DAYS = 30


# --------------------------------------------------------------------------- pure checks


def normalise_endpoint(endpoint: str) -> str:
    """``https://host[:port]`` (a path is kept, a trailing slash dropped), or a ServiceError."""
    endpoint = (endpoint or "").strip()
    if not endpoint:
        raise ServiceError("the key service's address is required", field="endpoint")
    if len(endpoint) > 300:
        raise ServiceError("the address is longer than 300 characters", field="endpoint")
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises ValueError on a port out of range or not a number
    except ValueError:
        raise ServiceError("not a valid URL", field="endpoint") from None
    if parts.scheme.lower() != "https":
        raise ServiceError(
            "the key service is reached over HTTPS only (mutual TLS): the address must start with https://",
            field="endpoint",
        )
    if not parts.hostname:
        raise ServiceError("the address names no host", field="endpoint")
    if parts.username is not None or parts.password is not None:
        raise ServiceError("the address may not carry a user name or password", field="endpoint")
    if parts.query or parts.fragment:
        raise ServiceError("the address may not carry a query or fragment", field="endpoint")
    if any(ch.isspace() for ch in endpoint):
        raise ServiceError("the address may not contain spaces", field="endpoint")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"https://{netloc}{parts.path.rstrip('/')}"


def parse_service_certificate(pem: str) -> tuple[x509.Certificate, str]:
    """The one X.509 certificate in ``pem`` and its SHA-256 (hex, of the DER), or a ServiceError."""
    text = (pem or "").strip()
    if not text:
        raise ServiceError("the key service's certificate (PEM) is required", field="service_certificate")
    if len(text) > MAX_PEM_CHARS:
        raise ServiceError(f"the certificate is longer than {MAX_PEM_CHARS} characters", field="service_certificate")
    if "PRIVATE KEY" in text:
        raise ServiceError(
            "this contains a private key: paste the service's certificate only, and keep the key with the bank",
            field="service_certificate",
        )
    blocks = re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----", text)
    if not blocks:
        raise ServiceError("not a PEM certificate (expected -----BEGIN CERTIFICATE-----)", field="service_certificate")
    if blocks != ["CERTIFICATE"]:
        raise ServiceError(
            f"expected exactly one certificate, found {len(blocks)} PEM block(s)", field="service_certificate"
        )
    try:
        certificate = x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ServiceError("the certificate does not parse as X.509 (PEM)", field="service_certificate") from None
    der = certificate.public_bytes(serialization.Encoding.DER)
    return certificate, hashlib.sha256(der).hexdigest()


def check_oce_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """A key service's PKCS#10 request for its OCE key: it must parse, its signature must verify
    (the service holds the key it asks a certificate for), and the key must be P-256."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        key = csr.public_key()
        signature_valid = csr.is_signature_valid
    except (ValueError, UnicodeEncodeError, AttributeError, TypeError):
        raise ServiceError("the key service sent a request (CSR) that does not parse", code="invalid") from None
    if not signature_valid:
        raise ServiceError("the key service's certificate request is not signed by its key", code="invalid")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ServiceError("the OCE key in the key service's request is not a P-256 key", code="invalid")
    return csr


_HEX_RUN = re.compile(r"[0-9A-Fa-f]{32,}")
_PEM_BLOCK = re.compile(r"-----BEGIN [^-]+-----.*?(-----END [^-]+-----|$)", re.S)


def error_text(exc: BaseException) -> str:
    """What went wrong, for ``last_error`` and messages: clear text, at most 300 characters, no
    PEM block and no long hexadecimal string (nothing that could be key material)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    whose = getattr(exc, "whose", None)
    prefix = f"{code} ({whose}): " if code and whose else f"{code}: " if code else ""
    text = prefix + str(message)
    text = _PEM_BLOCK.sub("[PEM]", text)
    text = _HEX_RUN.sub("[…]", text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def parse_not_after(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


# --------------------------------------------------------------------------- the platform's client


_identities: dict[Path, tuple[int, ClientIdentity]] = {}
_clients: dict[tuple[int, str, str, str], BankServiceClient] = {}
_clients_lock = threading.Lock()


def platform_identity() -> ClientIdentity:
    """The platform's TLS client identity (created once in ``ECARD_KEYSERVICE_CLIENT_DIR``): the
    certificate every bank's key service pins. Read once per process while its file is unchanged
    (every relay exchange with a bank's service asks for it)."""
    directory = Path(settings.ECARD_KEYSERVICE_CLIENT_DIR)
    cached = _identities.get(directory)
    try:
        stamp = (directory / CLIENT_CERTIFICATE_FILE).stat().st_mtime_ns
    except FileNotFoundError:
        stamp = None
    if cached is not None and cached[0] == stamp:
        return cached[1]
    identity = ensure_client_identity(directory)
    _identities[directory] = (identity.cert_path.stat().st_mtime_ns, identity)
    return identity


def registered_service(organization: Organization) -> BankKeyService | None:
    """The bank's active key service, or None."""
    return BankKeyService.objects.filter(organization=organization, is_active=True).first()


def active_service(organization: Organization) -> BankKeyService:
    service = registered_service(organization)
    if service is None:
        raise ServiceError(
            f"{organization.name} has no key service registered: the agency registers it first",
            field="organization",
            code="state",
        )
    return service


def client_of(service: BankKeyService) -> BankServiceClient:
    """The client of a registered service: one per endpoint, pinned certificate and platform
    identity in this process, so its keep-alive connections serve every exchange and check."""
    identity = platform_identity()
    key = (service.pk, service.endpoint, service.certificate_sha256, identity.sha256)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = BankServiceClient(service.endpoint, service.service_certificate, identity)
            _clients[key] = client
    return client


def _client(service: BankKeyService) -> BankServiceClient:
    try:
        return client_of(service)
    except OSError as exc:
        logger.exception("the platform's key service client identity cannot be read or created")
        raise ServiceError(
            f"the platform's TLS client identity is not available ({type(exc).__name__})", code="unavailable"
        ) from None


def client_for(organization: Organization) -> BankServiceClient:
    """A client for the bank's registered, active key service (else a ServiceError)."""
    return _client(active_service(organization))


def _as_service_error(exc: BankServiceError, doing: str) -> ServiceError:
    """A key service's refusal or failure as the platform's ServiceError (never a 500)."""
    if isinstance(exc, BankServiceUnavailable):
        code = "unavailable"
    elif isinstance(exc, BankServiceRefused):
        code = "refused"
    else:
        code = "invalid"
    return ServiceError(f"the bank's key service {doing}: {error_text(exc)}", code=code)


# --------------------------------------------------------------------------- permissions


def _is_agency_admin(actor: User | None) -> bool:
    if actor is None:  # the platform itself (seed commands)
        return True
    who = roles.principal(actor)
    return any(who.has_role(org_id, Membership.Role.ADMIN) for org_id in who.org_ids(Organization.Kind.AGENCY))


def _agency_of(actor: User | None) -> Organization | None:
    if actor is None:
        return None
    ids = roles.principal(actor).org_ids(Organization.Kind.AGENCY)
    return Organization.objects.filter(pk__in=ids).first() if ids else None


def the_agency() -> Organization:
    agency = Organization.objects.filter(kind=Organization.Kind.AGENCY).order_by("pk").first()
    if agency is None:
        raise ServiceError("the platform has no agency", code="state")
    return agency


# --------------------------------------------------------------------------- registration


def register_key_service(
    *, organization: Organization, endpoint: str, service_certificate_pem: str, actor: User | None
) -> BankKeyService:
    """The agency admits (or re-registers) a bank's key service: where it listens and the TLS
    certificate the platform pins. Agency admins only. Runs a first health check afterwards (its
    outcome is on the returned row; registration stands even if the service does not answer yet)."""
    if not _is_agency_admin(actor):
        raise ServiceError("only an agency administrator registers a bank's key service", code="not_admin")
    if not organization.is_bank:
        raise ServiceError("only a bank has a key service", field="organization")
    endpoint = normalise_endpoint(endpoint)
    certificate, sha256 = parse_service_certificate(service_certificate_pem)
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    with transaction.atomic():
        service = BankKeyService.objects.select_for_update().filter(organization=organization).first()
        previous = None if service is None else {"endpoint": service.endpoint, "sha256": service.certificate_sha256}
        if service is None:
            service = BankKeyService(organization=organization)
        service.endpoint = endpoint
        service.service_certificate = pem
        service.certificate_sha256 = sha256
        service.registered_by = actor if actor is not None and getattr(actor, "pk", None) else None
        service.is_active = True
        # A new address or certificate: what we knew of the old one says nothing of the new.
        service.checked_at = None
        service.reachable = None
        service.last_error = ""
        service.journal_size = None
        service.save()
        details: dict[str, Any] = {"endpoint": endpoint, "sha256": sha256}
        if previous is not None:
            details["previous"] = previous
        # From now on the bank's new SSDs are installed for SCP11 and keyed by its service alone
        # (SSDs enrolled before keep their keys where they are).
        template = SsdTemplate.objects.select_for_update().filter(organization=organization).first()
        if template is not None and template.scp != SCP11_ID:
            details["ssd_template_scp"] = {"from": template.scp, "to": SCP11_ID}
            template.scp, template.scp_i = SCP11_ID, 0x00
            template.key_algorithm, template.key_length = SsdTemplate.KeyAlgorithm.AES, 16
            template.save(update_fields=["scp", "scp_i", "key_algorithm", "key_length", "updated_at"])
            organization.ssd_template = template  # the caller's organisation sees the new template
        record_event(
            action="key_service.registered",
            subject_type="key_service",
            subject_id=organization.slug,
            actor=actor,
            actor_org=_agency_of(actor),
            organization=organization,
            details=details,
        )
    service = check_key_service(service)
    if service.reachable:
        adopt_service_dap_key(service)
    return service


def adopt_service_dap_key(service: BankKeyService) -> bool:
    """Record the DAP key of the bank's service as the bank's DAP verification key (issue 18): the
    service puts that key into the bank's SSDs and signs the bank's releases with it, so the
    platform checks release signatures against the same key the cards hold. False (and nothing
    changed) when the service cannot say now; registration stands, and it is tried again then."""
    from issuers.code_signing import set_bank_dap_key

    try:
        point = _client(service).dap_public_key()
    except (BankServiceError, ServiceError) as exc:
        logger.warning("key service of %s gave no DAP key: %s", service.organization.slug, error_text(exc))
        return False
    set_bank_dap_key(bank=service.organization, point=point, actor=None)
    return True


# --------------------------------------------------------------------------- health


def _health(service: BankKeyService) -> tuple[dict[str, Any] | None, str]:
    """Ask the service's /v1/health: (answer, "") or (None, why not)."""
    try:
        with _client(service) as client:
            answer = client.health()
    except BankServiceError as exc:
        return None, error_text(exc)
    except (OSError, ValueError) as exc:  # a client that let a transport error through
        return None, error_text(exc)
    except ServiceError as exc:  # the platform's own side (its client identity)
        return None, error_text(exc)
    if not isinstance(answer, dict):
        return None, "the service's health answer is not a JSON object"
    bank = answer.get("bank")
    if bank != service.organization.slug:
        return None, error_text(ValueError(f"the service says it is bank {bank!r}, not {service.organization.slug!r}"))
    if answer.get("status") != "ok":
        return None, error_text(ValueError(f"the service reports status {answer.get('status')!r}"))
    return answer, ""


def check_key_service(service: BankKeyService) -> BankKeyService:
    """Ask the bank's service whether it is well (``GET /v1/health``) and record the answer.
    Only a change (reachable ↔ unreachable) is audited."""
    answer, error = _health(service)
    now = timezone.now()
    with transaction.atomic():
        service = BankKeyService.objects.select_for_update().select_related("organization").get(pk=service.pk)
        was = service.reachable
        service.checked_at = now
        service.reachable = answer is not None
        service.last_error = error
        fields = ["checked_at", "reachable", "last_error"]
        if answer is not None:
            journal = answer.get("journal")
            size = journal.get("size") if isinstance(journal, dict) else None
            service.journal_size = size if isinstance(size, int) and size >= 0 else None
            oce = answer.get("oce_certificate")
            service.oce_not_after = parse_not_after(oce.get("not_after")) if isinstance(oce, dict) else None
            fields += ["journal_size", "oce_not_after"]
        service.save(update_fields=fields)
        if answer is None and was is not False:
            record_event(
                action="key_service.unreachable",
                subject_type="key_service",
                subject_id=service.organization.slug,
                actor_type="system",
                organization=service.organization,
                outcome="failure",
                reason=error,
                details={"endpoint": service.endpoint, "error": error},
            )
        elif answer is not None and was is not True:
            record_event(
                action="key_service.reachable",
                subject_type="key_service",
                subject_id=service.organization.slug,
                actor_type="system",
                organization=service.organization,
                details={"endpoint": service.endpoint, "journal_size": service.journal_size},
            )
    if answer is not None and not BankDapKey.objects.filter(bank=service.organization).exists():
        adopt_service_dap_key(service)  # a service registered while it was down: its DAP key now
    return service


def check_all_key_services() -> int:
    """Check every active key service (Celery beat); one failing check does not stop the others.
    Returns how many were checked."""
    checked = 0
    for service in BankKeyService.objects.filter(is_active=True).select_related("organization").order_by("pk"):
        try:
            check_key_service(service)
        except Exception:  # one bank's trouble must not stop the others' checks
            logger.exception("key service check of %s failed", service.organization.slug)
        else:
            checked += 1
    return checked


# --------------------------------------------------------------------------- OCE certificate


def _may_rotate(actor: User | None, organization: Organization) -> bool:
    return _is_agency_admin(actor) or (
        actor is not None and roles.principal(actor).has_role(organization.pk, Membership.Role.ADMIN)
    )


def issue_oce_certificate(
    *, organization: Organization, csr: x509.CertificateSigningRequest, actor: User | None, today: dt.date | None = None
) -> x509.Certificate:
    """Sign the bank's OCE key under the agency's OCE CA (one year; key agreement and digital
    signature, as Amendment F's OCE certificates need) and put it in the transparency log."""
    from gp.scp11 import KeyUsage

    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):  # check_oce_csr refused it already
        raise ServiceError("the OCE key is not an EC key", code="invalid")
    today = today or timezone.now().date()
    agency = the_agency()
    with transaction.atomic():
        ca = agency_ca(agency, KeySet.Purpose.OCE_CA, actor=actor)
        issued = ca.issue_x509(
            serial_number=x509.random_serial_number(),
            subject_name=f"{organization.name} OCE",
            subject_identifier=x509.SubjectKeyIdentifier.from_public_key(key).digest,
            public_key=key,
            key_usage=KeyUsage.KEY_AGREEMENT,
            digital_signature=True,
            not_before=today,
            not_after=today + dt.timedelta(days=OCE_VALIDITY_DAYS),
        )
        certificate = issued.certificate
        record_event(
            action="certificate.issued",
            subject_type="organization",
            subject_id=organization.slug,
            actor=actor,
            actor_org=_agency_of(actor),
            organization=organization,
            details={
                "kind": "oce",
                "organization": organization.slug,
                "issuer": ca.identifier.hex().upper(),
                "serial": format(certificate.serial_number, "X"),
                "sha256": hashlib.sha256(issued.der).hexdigest(),
                "not_after": certificate.not_valid_after_utc.isoformat(),
            },
        )
    return certificate


def rotate_oce_certificate(*, organization: Organization, actor: User | None) -> BankKeyService:
    """A new OCE key pair in the bank's token and its certificate: the service makes the key and a
    request (CSR), the agency's OCE CA signs it, the service installs the certificate. Bank admins
    of that bank, or agency admins."""
    if not _may_rotate(actor, organization):
        raise ServiceError(
            "only an administrator of the bank or of the agency rotates the OCE certificate", code="not_admin"
        )
    service = active_service(organization)
    with _client(service) as client:
        try:
            csr_pem = client.oce_csr()
        except BankServiceError as exc:
            raise _as_service_error(exc, "did not make a certificate request") from None
        csr = check_oce_csr(csr_pem)
        certificate = issue_oce_certificate(organization=organization, csr=csr, actor=actor)
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        try:
            client.install_oce_certificate(pem)
        except BankServiceError as exc:
            raise _as_service_error(
                exc, f"did not install the OCE certificate (serial {certificate.serial_number:X}, issued and logged)"
            ) from None
    with transaction.atomic():
        service = BankKeyService.objects.select_for_update().get(pk=service.pk)
        service.oce_certificate = pem
        service.oce_not_after = certificate.not_valid_after_utc
        service.save(update_fields=["oce_certificate", "oce_not_after"])
        record_event(
            action="key_service.oce_installed",
            subject_type="key_service",
            subject_id=organization.slug,
            actor=actor,
            organization=organization,
            details={
                "serial": format(certificate.serial_number, "X"),
                "not_after": certificate.not_valid_after_utc.isoformat(),
            },
        )
    return service
