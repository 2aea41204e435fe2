"""The Django project of the E-Card platform: settings, URLs, the Celery app."""

from ecard.celery import app as celery_app

__all__ = ("celery_app",)
