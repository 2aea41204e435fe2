"""Portal-only state: the optional TOTP second factor of bank and agency operators."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class TotpDevice(models.Model):
    """A user's authenticator app (RFC 6238). The shared secret is stored wrapped (AES-GCM under a
    key derived from the server secret), never in clear, and never shown after enrolment."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="totp_device")
    wrapped_secret = models.BinaryField(editable=False)
    confirmed_at = models.DateTimeField(null=True, blank=True, help_text="empty: enrolment not finished")
    last_step = models.BigIntegerField(default=0, help_text="time step of the last accepted code (no reuse)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "TOTP device"

    def __str__(self) -> str:
        return f"TOTP device of user {self.user_id} ({'active' if self.confirmed_at else 'pending'})"

    def __repr__(self) -> str:
        return f"<TotpDevice user={self.user_id} confirmed={self.confirmed_at is not None}>"
