"""A bound on every request body, portal and API alike, checked before anything reads it.

Django bounds ``request.body`` and form fields (``DATA_UPLOAD_MAX_MEMORY_SIZE``) but not uploaded
files: a multipart request of any size was streamed to a temporary file, and a view calling
``.read()`` on the upload held all of it in memory. A request whose ``Content-Length`` exceeds
``ECARD_MAX_UPLOAD_BYTES`` (default: ``DATA_UPLOAD_MAX_MEMORY_SIZE``, 5 MiB; the largest
legitimate bodies are a 1 MiB CAP upload and a ~1 MiB relay exchange) is answered 413 at once:
a problem document under ``/api/``, a short text page elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ecard.problems import is_api_request, problem_response


def max_request_bytes() -> int | None:
    return getattr(settings, "ECARD_MAX_UPLOAD_BYTES", None) or settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = max_request_bytes()
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0  # Django reads such a body as empty
        if limit is not None and declared > limit:
            detail = f"The request body is larger than {limit} bytes."
            if is_api_request(request):
                return problem_response(413, "Request body too large.", detail, "request_too_large")
            return HttpResponse(detail, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
