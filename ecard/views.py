"""Project-level views: health check and error handlers."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from ecard.celery import app
from ecard.problems import is_api_request, problem_response

logger = logging.getLogger(__name__)


def check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return False, f"database unavailable: {type(exc).__name__}"
    return True, connection.vendor


def check_broker() -> tuple[bool, str]:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return True, "in-process (no broker configured)"

    try:
        with app.connection_for_write(url=settings.CELERY_BROKER_URL) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return False, f"broker unavailable: {type(exc).__name__}"
    return True, settings.CELERY_BROKER_URL.split("://", 1)[0]


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and readiness: 200 when the database and the broker answer, 503 otherwise."""
    db_ok, db_info = check_database()
    broker_ok, broker_info = check_broker()
    healthy = db_ok and broker_ok
    return JsonResponse(
        {
            "status": "ok" if healthy else "unavailable",
            "checks": {
                "database": {"ok": db_ok, "info": db_info},
                "broker": {"ok": broker_ok, "info": broker_info},
            },
        },
        status=200 if healthy else 503,
    )


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_request(request):
        return problem_response(404, "Not found", "No resource at this address.", "not_found")
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_request(request):
        return problem_response(
            500, "Internal server error", "The server could not complete the request.", "server_error"
        )
    return defaults.server_error(request)


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_request(request):
        return problem_response(403, "Forbidden", "You do not have permission to do this.", "permission_denied")
    return defaults.permission_denied(request, exception)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_request(request) and isinstance(exception, RequestDataTooBig):
        return problem_response(
            413, "Request body too large.", "The request body is larger than the server accepts.", "request_too_large"
        )
    if is_api_request(request):
        return problem_response(400, "Bad request", "The request could not be understood.", "bad_request")
    return defaults.bad_request(request, exception)
