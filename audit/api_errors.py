"""The API's exception handler: every error a problem document (:mod:`ecard.problems`), and the
refusals among them (credential refused, 403, 404 on an object route) in the security event log.

``REST_FRAMEWORK["EXCEPTION_HANDLER"]`` names :func:`exception_handler`. It lives here, not in
``ecard.problems``: the project core sits below audit (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response

from audit import security
from ecard.errors import ServiceError
from ecard.problems import problem_exception_handler

logger = logging.getLogger(__name__)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render the error as a problem document, and record it if it is a refusal."""
    response = problem_exception_handler(exc, context)
    try:
        record_refusal(exc, context, response.status_code if response is not None else None)
    except Exception:  # recording never turns a refusal into a 500
        logger.warning("security event not recorded", exc_info=True)
    return response


def record_refusal(exc: Exception, context: dict[str, Any], status_code: int | None) -> None:
    """What of an API error goes into the security event log (:mod:`audit.security`)."""
    request = context.get("request")
    raw = getattr(request, "_request", request)
    if raw is None or security.already_logged(raw):
        return
    security.mark_logged(raw)  # whatever happens here, the middleware need not look again
    object_route = bool(context.get("kwargs"))
    if isinstance(exc, exceptions.AuthenticationFailed):
        # Which scheme was refused (Token, Agent), never the credential itself.
        scheme = raw.META.get("HTTP_AUTHORIZATION", "").split(" ", 1)[0][:16]
        security.record(
            security.Kind.API_AUTH_FAILED,
            request=raw,
            status=status_code,
            reason=f"{scheme or 'credential'}: {exc.detail}"[:200],
        )
    elif isinstance(exc, exceptions.PermissionDenied | PermissionDenied) or (
        isinstance(exc, ServiceError) and exc.code in ("forbidden", "not_holder")
    ):
        security.record(security.Kind.FORBIDDEN, request=raw, status=status_code, reason=_view_name(context))
    elif object_route and (
        isinstance(exc, Http404 | exceptions.NotFound) or (isinstance(exc, ServiceError) and exc.code == "not_found")
    ):
        security.record(security.Kind.NOT_FOUND, request=raw, status=status_code, reason=_view_name(context))


def _view_name(context: dict[str, Any]) -> str:
    view = context.get("view")
    if view is None:
        return ""
    action = getattr(view, "action", None)
    return f"{type(view).__name__}{'.' + action if action else ''}"
