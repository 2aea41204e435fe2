"""What Django's error reports (the technical 500 page with ``DEBUG=1``, error mails) may show.

Django's :class:`~django.views.debug.SafeExceptionReporterFilter` masks settings and request
headers (and the environment, which ``runserver`` passes in ``request.META``) whose *names*
contain API, AUTH, TOKEN, KEY, SECRET, PASS, SIGNATURE. The platform also has secrets under other
names and inside values:

* names with PIN (``ECARD_PKCS11_PIN``), CREDENTIAL, PRIVATE, DSN, SALT, COOKIE, SESSION;
* URLs with a password (``CELERY_BROKER_URL``, ``CACHE_URL``, ``DATABASE_URL``, the cache's
  ``LOCATION``): the password part is masked wherever such a URL appears, in any setting or
  header, nested in dicts and lists;
* local variables of the traceback frames: those whose names look secret, and every bytes value
  (key material is bytes; the page shows its length only).
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

HIDDEN_NAMES = re.compile(
    r"API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|COOKIE|PIN|CREDENTIAL|PRIVATE|DSN|SALT|SESSION", re.IGNORECASE
)
# scheme://user:password@host  (user may be empty: redis://:password@host)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)(?P<password>[^\s/@]+)(?P<at>@)")
# ...?password=...  and friends in query strings
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|key|secret)=)(?P<value>[^&;\s]+)", re.I)


def mask_url_secrets(text: str) -> str:
    masked = _URL_PASSWORD.sub(lambda m: m["head"] + SafeExceptionReporterFilter.cleansed_substitute + m["at"], text)
    return _QUERY_SECRET.sub(lambda m: m["head"] + SafeExceptionReporterFilter.cleansed_substitute, masked)


class SecretMaskingExceptionReporterFilter(SafeExceptionReporterFilter):
    hidden_settings = HIDDEN_NAMES

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        if isinstance(value, str):
            return mask_url_secrets(value)
        return value

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        cleansed = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            if isinstance(name, str) and self.hidden_settings.search(name):
                value = self.cleansed_substitute
            elif isinstance(value, bytes | bytearray | memoryview):
                value = f"<{len(bytes(value))} bytes hidden>"
            else:
                value = self.cleanse_setting("", value)  # dicts by key name, URL passwords in strings
            cleansed.append((name, value))
        return cleansed
