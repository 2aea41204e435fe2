"""The Celery application.

With ``CELERY_BROKER_URL`` set, tasks go to that broker (Redis in production and CI)
and run in separate worker processes (``celery -A ecard worker``). Without it, the
embedded default runs every task in-process and eagerly (see ``ecard.settings``).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecard.settings")

app = Celery("ecard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
