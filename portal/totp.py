"""Optional second factor for operators: TOTP (RFC 6238) with ``cryptography``'s primitive.

The shared secret is generated here, wrapped with AES-GCM under a key derived (HKDF) from the
server secret and bound to the user id, and only unwrapped to check a code. After a SECRET_KEY
rotation the old key in SECRET_KEY_FALLBACKS still opens it; if neither does, codes are refused
and an administrator deletes the device (admin: "TOTP devices") so the user can enrol again. A code is accepted
once (the step of the last accepted code is kept) within one step of clock drift.
"""

from __future__ import annotations

import base64
import logging
import os
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA1, SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.services import record_event
from issuers.roles import principal
from portal.models import TotpDevice

logger = logging.getLogger(__name__)

DIGITS = 6
STEP = 30
DRIFT_STEPS = 1
ISSUER = "E-Card platform"
SECRET_BYTES = 20  # 160 bits, RFC 4226 §4 recommendation
SESSION_PASSED = "portal_2fa_passed"  # user id whose second factor this session passed


class SecretUnavailable(Exception):
    """The wrapped secret does not open under SECRET_KEY or any SECRET_KEY_FALLBACKS."""


def _wrapping_key(secret_key: str) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"ecard portal totp secret wrap v1").derive(
        secret_key.encode()
    )


def _aad(user_id: int) -> bytes:
    return f"totp:user:{user_id}".encode()


def wrap_secret(user_id: int, secret: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(_wrapping_key(settings.SECRET_KEY)).encrypt(nonce, secret, _aad(user_id))


def unwrap_secret(user_id: int, wrapped: bytes) -> bytes:
    """The secret, under the current SECRET_KEY or one of SECRET_KEY_FALLBACKS (Django's rotation)."""
    wrapped = bytes(wrapped)
    for key in (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])):
        try:
            return AESGCM(_wrapping_key(key)).decrypt(wrapped[:12], wrapped[12:], _aad(user_id))
        except InvalidTag:
            continue
    raise SecretUnavailable(f"the second factor of user {user_id} cannot be opened (SECRET_KEY changed?)")


def _totp(secret: bytes) -> TOTP:
    return TOTP(secret, DIGITS, SHA1(), STEP, enforce_key_length=True)  # noqa: S303 - RFC 6238 default, what apps support


def eligible(user: User) -> bool:
    """Bank and agency operators, and staff (the admin), may protect their account with a second factor."""
    if getattr(user, "is_staff", False):
        return True
    who = principal(user)
    return bool(who.bank_ids) or who.is_agency


def device_for(user: User) -> TotpDevice | None:
    return TotpDevice.objects.filter(user=user).first()


def required(user: User) -> bool:
    device = device_for(user)
    return device is not None and device.confirmed_at is not None


@transaction.atomic
def start_enrolment(user: User) -> TotpDevice:
    """A fresh, unconfirmed device (replacing an unconfirmed one)."""
    TotpDevice.objects.filter(user=user, confirmed_at__isnull=True).delete()
    if TotpDevice.objects.filter(user=user).exists():
        raise ValueError("a second factor is already active")
    return TotpDevice.objects.create(user=user, wrapped_secret=wrap_secret(user.pk, os.urandom(SECRET_BYTES)))


def provisioning_uri(device: TotpDevice) -> str:
    """The otpauth:// URI an authenticator app imports (it carries the secret: show it only to its owner)."""
    secret = unwrap_secret(device.user_id, device.wrapped_secret)
    return _totp(secret).get_provisioning_uri(device.user.get_username(), ISSUER)


def secret_base32(device: TotpDevice) -> str:
    return base64.b32encode(unwrap_secret(device.user_id, device.wrapped_secret)).decode().rstrip("=")


def code_at(device: TotpDevice, when: float) -> str:
    """The code for a moment (tests and clock checks)."""
    return _totp(unwrap_secret(device.user_id, device.wrapped_secret)).generate(int(when)).decode()


@transaction.atomic
def check_code(device: TotpDevice, code: str, *, now: float | None = None) -> bool:
    """True when ``code`` is valid now (±1 step) and newer than the last accepted one; records its step."""
    code = (code or "").strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return False
    device = TotpDevice.objects.select_for_update().get(pk=device.pk)
    try:
        totp = _totp(unwrap_secret(device.user_id, device.wrapped_secret))
    except SecretUnavailable:
        logger.warning("second factor of user %s cannot be opened; an administrator must reset it", device.user_id)
        return False
    moment = time.time() if now is None else now
    current = int(moment) // STEP
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if step <= device.last_step:
            continue
        try:
            totp.verify(code.encode(), step * STEP)
        except InvalidToken:
            continue
        device.last_step = step
        if device.confirmed_at is None:
            device.confirmed_at = timezone.now()
        device.save(update_fields=["last_step", "confirmed_at"])
        return True
    return False


def disable(user: User) -> None:
    TotpDevice.objects.filter(user=user).delete()


@transaction.atomic
def reset_device(device: TotpDevice, *, actor: User) -> None:
    """An administrator deletes a user's second factor (so they can enrol again), with its audit entry."""
    record_event(
        action="second_factor.reset",
        subject_type="user",
        subject_id=device.user_id,
        actor=actor,
        details={"via": "admin"},
    )
    TotpDevice.objects.filter(pk=device.pk).delete()


def mark_session_passed(request: HttpRequest) -> None:
    """The session's user has just proved their second factor (login step two, or enrolment)."""
    request.session[SESSION_PASSED] = request.user.pk


def session_passed_second_factor(request: HttpRequest) -> bool:
    """True unless the signed-in user has a second factor that this session has not passed.

    The portal only logs in a user with a second factor after the code, but a session made by any
    other path (another login view, a future one) must not open what the second factor guards."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not required(user):
        return True
    return request.session.get(SESSION_PASSED) == user.pk
