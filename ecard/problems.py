"""RFC 7807 problem documents: the one error format of the API.

Every API error — validation, authentication, permission, not found, throttling,
unhandled server errors — is answered as ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``; validation errors add ``errors``
(field -> messages).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from ecard.errors import ServiceError
from ecard.parsers import RequestTooLarge

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://ecard.invalid/problems/"


def problem_body(status_code: int, title: str, detail: str, code: str, **extra: Any) -> dict[str, Any]:
    """The members of one problem document (RFC 7807 §3.1)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code.replace("_", "-"),
        "title": title,
        "status": status_code,
        "detail": detail,
    }
    body.update(extra)
    return body


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list | tuple):
        return " ".join(_detail_text(item) for item in detail)
    if isinstance(detail, dict):
        return " ".join(f"{key}: {_detail_text(value)}" for key, value in detail.items())
    return str(detail)


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler that renders every error as a problem document.

    The API's handler (``REST_FRAMEWORK["EXCEPTION_HANDLER"]``) is
    :func:`audit.api_errors.exception_handler`, which calls this one and records the refusals in the
    security event log: this module sits below audit (docs/ARCHITECTURE.md, "Layers")."""
    return _problem_response(exc, context)


def _problem_response(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        status_code = exc.http_status
        titles = {409: "Conflict", 404: "Not found", 503: "Service unavailable"}
        body = problem_body(
            status_code,
            titles.get(status_code, "Request refused"),
            exc.message,
            exc.code,
            errors={exc.field or "non_field_errors": [exc.message]},
        )
        return Response(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        # Django refused to read more of the body (request.body / request.POST past
        # DATA_UPLOAD_MAX_MEMORY_SIZE, e.g. in the CSRF check of session authentication).
        exc = RequestTooLarge(f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
    elif isinstance(exc, SuspiciousOperation):
        # Too many fields or files, a disallowed host, ...: the client's fault, never a 500.
        logger.warning("suspicious request refused: %s", type(exc).__name__)
        exc = exceptions.ParseError(f"The request was refused: {exc}")
    response = exception_handler(exc, context)
    if response is None:
        # Unhandled: log with the traceback, answer without internals.
        logger.exception("unhandled API error", exc_info=exc)
        response = Response(status=status.HTTP_500_INTERNAL_SERVER_ERROR)
        body = problem_body(500, "Internal server error", "The server could not complete the request.", "server_error")
    elif isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = problem_body(
            response.status_code,
            "Invalid request",
            _detail_text(exc.detail),
            "validation_error",
            errors=errors,
        )
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        body = problem_body(
            response.status_code,
            str(exc.default_detail),
            _detail_text(exc.detail),
            str(code),
        )
    else:  # pragma: no cover - exception_handler only handles APIException/Http404/PermissionDenied
        body = problem_body(response.status_code, "Error", str(exc), "error")
    response.data = body
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def problem_response(status_code: int, title: str, detail: str, code: str) -> JsonResponse:
    """A problem document outside DRF views (URL resolver 404s, 500s under /api/)."""
    return JsonResponse(
        problem_body(status_code, title, detail, code),
        status=status_code,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")
