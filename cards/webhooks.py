"""Banks' webhooks: where their card notices are POSTed, signed (docs/notifications.md).

* **Signature.** The body is signed with the platform's log signing key (Ed25519), which banks
  already pin to verify the log's checkpoints: no shared secret is stored. The signed bytes are
  ``b"ecard-webhook-v1\\n" + <X-ECard-Timestamp> + b"\\n" + <body>`` (a prefix no checkpoint text
  can start with, so a webhook signature never passes for a checkpoint's), sent base64 in
  ``X-ECard-Signature``; ``X-ECard-Key`` names the key (the log's ``<origin>+<key id>``).
* **Delivery.** One POST of JSON with a short timeout, no redirects followed; a 2xx answer is
  delivered. Otherwise the notice stays pending and the Celery task tries again with backoff,
  :data:`MAX_ATTEMPTS` attempts in all, then it is ``failed``. ``last_error`` is a short reason:
  never a stack trace, never the answer's body. At least once: the notice's ``id`` de-duplicates.
* **Which URLs (SSRF).** ``https`` only, no user or password in it. The host's addresses must all
  be public (``ipaddress.is_global``); they are checked when the URL is set and again at each
  delivery, and the connection goes to the address that was checked (no DNS rebinding between the
  check and the connection). Only with ``ECARD_WEBHOOK_ALLOW_LOOPBACK`` (default: ``DEBUG``) may a
  webhook be ``http`` or ``https`` on a loopback address (the demo, tests); private, link-local and
  other reserved ranges are refused always.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import checkpoint_signer, log_verifier_key, record_event
from cards.models import BankNotice, Webhook
from ecard.errors import ServiceError
from issuers.models import Membership, Organization
from issuers.roles import principal

TIMEOUT_SECONDS = 5
MAX_ATTEMPTS = 4
BACKOFF_SECONDS = (30, 120, 600)  # before the 2nd, 3rd and 4th attempts
SIGNATURE_CONTEXT = b"ecard-webhook-v1\n"
SIGNATURE_HEADER = "X-ECard-Signature"
TIMESTAMP_HEADER = "X-ECard-Timestamp"
KEY_HEADER = "X-ECard-Key"
NOTICE_HEADER = "X-ECard-Notice"
MAX_URL = 500


def signed_message(timestamp: str, body: bytes) -> bytes:
    """The bytes the signature covers (what a bank verifies, docs/notifications.md)."""
    return SIGNATURE_CONTEXT + timestamp.encode("ascii") + b"\n" + body


def _loopback_allowed() -> bool:
    return bool(getattr(settings, "ECARD_WEBHOOK_ALLOW_LOOPBACK", settings.DEBUG))


def _addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ServiceError(f"the webhook's host {host} does not resolve", field="url") from None
    return sorted({str(info[4][0]) for info in infos})


def _check_address(address: str) -> bool:
    """Whether the platform may connect there: a public address, or loopback where allowed."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return _loopback_allowed()
    return ip.is_global and not ip.is_multicast


def check_url(url: str) -> tuple[str, str, int, str, list[str]]:
    """The URL's scheme, host, port, path and the addresses it may be reached at; a ServiceError
    (field ``url``) saying what is wrong with it otherwise."""
    url = (url or "").strip()
    if not url or len(url) > MAX_URL:
        raise ServiceError(f"give the webhook's address (at most {MAX_URL} characters)", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ServiceError("the webhook's address is not a URL", field="url") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ServiceError("the webhook's address must be an https:// URL", field="url")
    if parts.username is not None or parts.password is not None:
        raise ServiceError("the webhook's address may not carry a user or password", field="url")
    if parts.fragment:
        raise ServiceError("the webhook's address may not have a #fragment", field="url")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port)
    if not addresses:
        raise ServiceError(f"the webhook's host {host} does not resolve", field="url")
    for address in addresses:
        if not _check_address(address):
            raise ServiceError(
                f"the webhook's host {host} resolves to {address}, which is not a public address", field="url"
            )
    loopback = all(ipaddress.ip_address(a).is_loopback for a in addresses)
    if parts.scheme == "http" and not (loopback and _loopback_allowed()):
        raise ServiceError("the webhook's address must be an https:// URL", field="url")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, path, addresses


def _require_bank_admin(actor: User, organization: Organization) -> None:
    if not (organization.is_bank and principal(actor).has_role(organization.pk, Membership.Role.ADMIN)):
        raise ServiceError(f"only an admin of {organization.name} sets its webhook", code="forbidden")


@transaction.atomic
def set_webhook(*, organization: Organization, url: str, actor: User) -> Webhook:
    """Set (or replace) the bank's webhook; the URL is checked now and at each delivery. Audited."""
    _require_bank_admin(actor, organization)
    check_url(url)
    hook, _created = Webhook.objects.update_or_create(
        organization=organization, defaults={"url": url.strip(), "active": True, "created_by": actor}
    )
    record_event(
        action="webhook.set",
        subject_type="organization",
        subject_id=organization.slug,
        actor=actor,
        actor_org=organization,
        organization=organization,
        details={"url": hook.url},
    )
    return hook


@transaction.atomic
def clear_webhook(*, organization: Organization, actor: User) -> None:
    """Remove the bank's webhook: its notices are listed only (API, dashboard). Audited."""
    _require_bank_admin(actor, organization)
    deleted, _ = Webhook.objects.filter(organization=organization).delete()
    if not deleted:
        raise ServiceError(f"{organization.name} has no webhook", code="state")
    BankNotice.objects.filter(organization=organization, delivery=BankNotice.Delivery.PENDING).update(
        delivery=BankNotice.Delivery.FAILED, last_error="the webhook was removed"
    )
    record_event(
        action="webhook.cleared",
        subject_type="organization",
        subject_id=organization.slug,
        actor=actor,
        actor_org=organization,
        organization=organization,
    )


def payload(notice: BankNotice) -> dict[str, Any]:
    """What a notice's webhook carries: identifiers and words, never key material or personal data."""
    return {
        "id": notice.pk,
        "kind": notice.kind,
        "bank": notice.organization.slug,
        "card": notice.card.cin,
        "message": notice.message,
        "details": notice.details,
        "created_at": notice.created_at.isoformat(),
    }


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the host name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, the certificate verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def _post(url: str, body: bytes, headers: dict[str, str]) -> str | None:
    """POST ``body``; None when the bank's server answered 2xx, else a short reason."""
    try:
        scheme, host, port, path, addresses = check_url(url)
    except ServiceError as exc:
        return exc.message
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = cls(host, port, addresses[0], TIMEOUT_SECONDS)
    try:
        connection.request("POST", path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read(4096)  # not kept: the bank's answer body is none of the platform's business
        if 200 <= answer.status < 300:
            return None
        return f"the webhook answered HTTP {answer.status}"
    except (OSError, http.client.HTTPException) as exc:  # refused, timed out, TLS, malformed answer
        return f"the webhook could not be reached ({type(exc).__name__})"
    finally:
        connection.close()


def deliver(notice_id: int) -> int | None:
    """One delivery attempt of a pending notice. Returns the seconds to wait before trying again,
    or None when there is nothing more to do (delivered, failed for good, or not pending)."""
    notice = BankNotice.objects.select_related("organization", "card").filter(pk=notice_id).first()
    if notice is None or notice.delivery != BankNotice.Delivery.PENDING:
        return None
    hook = Webhook.objects.filter(organization_id=notice.organization_id, active=True).first()
    attempts = notice.attempts + 1
    if hook is None:
        error: str | None = "the bank has no active webhook"
        attempts = MAX_ATTEMPTS
    else:
        body = json.dumps(payload(notice), separators=(",", ":"), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        try:
            vkey = log_verifier_key(create=True) or ""  # the key banks pin (made once, if the log has none yet)
            signature = checkpoint_signer().sign(signed_message(timestamp, body))
        except ServiceError as exc:
            error, signature, vkey = f"the platform could not sign the notice ({exc.message})", b"", ""
        else:
            error = _post(
                hook.url,
                body,
                {
                    "Content-Type": "application/json",
                    "User-Agent": "ecard-platform-webhook/1",
                    SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
                    TIMESTAMP_HEADER: timestamp,
                    KEY_HEADER: "+".join(vkey.split("+", 2)[:2]),  # <origin>+<key id>
                    NOTICE_HEADER: str(notice.pk),
                },
            )
    final = error is None or attempts >= MAX_ATTEMPTS
    delivery = (
        BankNotice.Delivery.DELIVERED
        if error is None
        else (BankNotice.Delivery.FAILED if final else BankNotice.Delivery.PENDING)
    )
    with transaction.atomic():
        updated = BankNotice.objects.filter(pk=notice.pk, delivery=BankNotice.Delivery.PENDING).update(
            delivery=delivery,
            attempts=attempts,
            last_error=(error or "")[:500],
            delivered_at=timezone.now() if error is None else None,
        )
        if updated and final:
            record_event(
                action="webhook.delivered" if error is None else "webhook.failed",
                subject_type="bank_notice",
                subject_id=notice.pk,
                card_cin=notice.card.cin,
                organization=notice.organization,
                outcome="success" if error is None else "failure",
                reason=error or "",
                actor_type="system",
                details={"kind": notice.kind, "attempts": attempts},
            )
    if final or not updated:
        return None
    return BACKOFF_SECONDS[min(attempts - 1, len(BACKOFF_SECONDS) - 1)]
