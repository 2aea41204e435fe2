"""A URLconf with a view that fails, for the error-page tests (tests/ecard/test_debug_pages.py)."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path


def boom(request: HttpRequest) -> HttpResponse:
    pin = settings.ECARD_PKCS11_PIN  # local variables a traceback would show
    broker = settings.CELERY_BROKER_URL
    kek_material = bytes.fromhex(settings.ECARD_TEST_KEY_HEX)
    raise RuntimeError(f"boom ({len(pin)}, {len(broker)}, {len(kek_material)})")


urlpatterns = [path("boom/", boom)]
