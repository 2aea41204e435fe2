"""Bounds every request meets before any view sees it, portal and API alike.

* **Size.** Django bounds ``request.body`` and form fields (``DATA_UPLOAD_MAX_MEMORY_SIZE``) but not
  uploaded files: a multipart request of any size was streamed to a temporary file, and a view
  calling ``.read()`` on the upload held all of it in memory. A request whose ``Content-Length``
  exceeds ``ECARD_MAX_UPLOAD_BYTES`` (default: ``DATA_UPLOAD_MAX_MEMORY_SIZE``, 5 MiB; the largest
  legitimate bodies are a 1 MiB CAP upload and a ~1 MiB relay exchange) is answered 413 at once.
* **NUL characters.** PostgreSQL refuses NUL in text, so a NUL in a URL path segment, a query
  parameter or a header (``/card/%00/``, ``?card=%00``, ``Authorization: Token a\\0b``) that reached
  a query was a 500 there (SQLite accepts it, so only production failed). No legitimate input of the
  platform has one: such a request is answered 400. Form fields and JSON strings are refused by
  Django's and DRF's fields (``ProhibitNullCharactersValidator``).

Refusals are problem documents under ``/api/`` and short text answers elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ecard.problems import is_api_request, problem_response


def max_request_bytes() -> int | None:
    return getattr(settings, "ECARD_MAX_UPLOAD_BYTES", None) or settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path_info:
        return True
    if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
        return True
    return any("\x00" in str(value) for key, value in request.META.items() if key.startswith("HTTP_"))


def _refuse(request: HttpRequest, status: int, title: str, detail: str, code: str) -> HttpResponse:
    if is_api_request(request):
        return problem_response(status, title, detail, code)
    return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")


class RequestBoundsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = max_request_bytes()
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0  # Django reads such a body as empty
        if limit is not None and declared > limit:
            return _refuse(
                request,
                413,
                "Request body too large.",
                f"The request body is larger than {limit} bytes.",
                "request_too_large",
            )
        if has_nul(request):
            return _refuse(
                request,
                400,
                "Bad request",
                "NUL characters are not allowed in the address, the query or headers.",
                "bad_request",
            )
        return self.get_response(request)
