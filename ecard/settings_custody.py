"""Key custody settings (imported at the end of :mod:`ecard.settings`).

``ECARD_KEY_BACKEND``      ``software`` (default) or ``pkcs11``: where new key-encryption keys live.
``ECARD_MASTER_KEY``       software backend: 32-byte master key, 64 hex digits or base64. Required
                           in production (DEBUG=0); otherwise, when unset, the installation's
                           generated key in ``var/secrets.json`` (:mod:`ecard.local_secrets`).
``ECARD_MASTER_KEY_PREVIOUS``  optional former master key, still accepted for opening KEKs while
                           ``rotate_kek --all`` re-creates them under the new master key.
``ECARD_PKCS11_MODULE``    PKCS#11 library path (e.g. ``/usr/lib/softhsm/libsofthsm2.so``).
``ECARD_PKCS11_TOKEN``     token label.
``ECARD_PKCS11_PIN``       user PIN of that token.

The master key and the PIN are secrets: never log them, never put them in the repository.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from ecard.settings import PRODUCTION, VAR_DIR

ECARD_KEY_BACKEND = os.environ.get("ECARD_KEY_BACKEND", "software").strip().lower() or "software"
if ECARD_KEY_BACKEND not in ("software", "pkcs11"):
    raise ImproperlyConfigured("ECARD_KEY_BACKEND must be 'software' or 'pkcs11'")

ECARD_MASTER_KEY = os.environ.get("ECARD_MASTER_KEY", "")
if ECARD_KEY_BACKEND == "software" and not ECARD_MASTER_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("ECARD_MASTER_KEY must be set when DEBUG is off (software key backend)")
    from ecard import local_secrets

    ECARD_MASTER_KEY = local_secrets.load(VAR_DIR)["ECARD_MASTER_KEY"]

ECARD_PKCS11_MODULE = os.environ.get("ECARD_PKCS11_MODULE", "")
ECARD_PKCS11_TOKEN = os.environ.get("ECARD_PKCS11_TOKEN", "")
ECARD_PKCS11_PIN = os.environ.get("ECARD_PKCS11_PIN", "")
if ECARD_KEY_BACKEND == "pkcs11" and not (ECARD_PKCS11_MODULE and ECARD_PKCS11_TOKEN and ECARD_PKCS11_PIN):
    raise ImproperlyConfigured(
        "ECARD_KEY_BACKEND=pkcs11 needs ECARD_PKCS11_MODULE, ECARD_PKCS11_TOKEN and ECARD_PKCS11_PIN"
    )
# Software backend: a former master key still accepted while KEKs are re-created under the new one.
ECARD_MASTER_KEY_PREVIOUS = os.environ.get("ECARD_MASTER_KEY_PREVIOUS", "")
