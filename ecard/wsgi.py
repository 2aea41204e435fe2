"""WSGI entry point (gunicorn ecard.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecard.settings")
application = get_wsgi_application()
