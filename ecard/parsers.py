"""Request body parsers of the API, with bounds: every hostile body is a 4xx problem document.

DRF's own parsers read a JSON or form body whole whatever its size (Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` only guards ``request.body`` and ``request.POST``), let a deeply
nested JSON document raise ``RecursionError`` and let Django's ``SuspiciousOperation`` errors
(too many fields, too much form data) escape as 500s. These parsers:

* refuse a JSON or form body larger than ``ECARD_MAX_JSON_BYTES`` (2 MiB; parsing a large JSON
  document of tiny values costs about 20 times its size in memory and a second of CPU per 5 MiB)
  or ``DATA_UPLOAD_MAX_MEMORY_SIZE``, and a multipart upload larger than ``ECARD_MAX_UPLOAD_BYTES``,
  with **413** — before reading it when ``Content-Length`` says so, and never reading more than the
  limit plus one byte otherwise;
* refuse JSON nested deeper than ``ECARD_JSON_MAX_DEPTH`` (32) levels, JSON that is not UTF-8,
  and the non-standard constants ``NaN``/``Infinity`` (also as overflowing numbers) with **400**;
* turn Django's form parsing refusals (too many fields or files, malformed multipart) into 400.

The largest legitimate JSON bodies are a relay exchange (``updates.services.MAX_BATCH_RESPONSES``
short R-APDUs in hex, about 1 MiB) and a rollout listing ``MAX_LISTED_CARDS`` CINs (about 0.4 MiB);
``tests/ecard/test_input_bounds.py`` checks that they fit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import QueryDict
from rest_framework import exceptions, parsers, status
from rest_framework.parsers import get_encoding  # type: ignore[attr-defined]  # DRF 3.18; stubs are 3.16

DEFAULT_JSON_MAX_DEPTH = 32


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


def json_max_depth() -> int:
    return int(getattr(settings, "ECARD_JSON_MAX_DEPTH", DEFAULT_JSON_MAX_DEPTH))


def body_limit() -> int | None:
    """Bytes a JSON or form body may have: ``ECARD_MAX_JSON_BYTES`` (2 MiB), and never more than
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (``None`` for both: unbounded)."""
    limits = [
        limit
        for limit in (getattr(settings, "ECARD_MAX_JSON_BYTES", None), settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if limit is not None
    ]
    return min(limits) if limits else None


def upload_limit() -> int | None:
    """Bytes a multipart body (files included) may have."""
    return getattr(settings, "ECARD_MAX_UPLOAD_BYTES", None) or body_limit()


def too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than {limit} bytes.")


def _declared_length(parser_context: Mapping[str, Any] | None) -> int | None:
    request = (parser_context or {}).get("request")
    meta = getattr(request, "META", {})
    try:
        return int(meta.get("CONTENT_LENGTH") or 0)
    except (TypeError, ValueError):
        return None


def check_declared_length(parser_context: Mapping[str, Any] | None, limit: int | None) -> None:
    declared = _declared_length(parser_context)
    if limit is not None and declared is not None and declared > limit:
        raise too_large(limit)


def read_bounded(stream: Any, parser_context: Mapping[str, Any] | None, limit: int | None = None) -> bytes:
    """The body, or :class:`RequestTooLarge`; reads at most ``limit + 1`` bytes."""
    limit = body_limit() if limit is None else limit
    check_declared_length(parser_context, limit)
    if stream is None:
        return b""
    data = stream.read() if limit is None else stream.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise too_large(limit)
    return data


def nesting_depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` (parsed JSON) has containers nested more than ``limit`` deep.

    Depth-first with one iterator per level: memory grows with the depth, not the width."""
    stack = [iter((value,))]
    while stack:
        for node in stack[-1]:
            if isinstance(node, dict | list):
                if len(stack) > limit:
                    return True
                stack.append(iter(node.values() if isinstance(node, dict) else node))
                break
        else:
            stack.pop()
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def loads_bounded(data: bytes, encoding: str = "utf-8") -> Any:
    """Parse a JSON body with the depth bound; :class:`ParseError` for anything malformed."""
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        raise exceptions.ParseError(f"JSON parse error - the body is not {encoding} text") from None
    if not text.strip():
        raise exceptions.ParseError("JSON parse error - the body is empty")
    limit = json_max_depth()
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise exceptions.ParseError(f"JSON parse error - nested deeper than {limit} levels") from None
    except ValueError as exc:  # JSONDecodeError, huge integers, NaN/Infinity
        raise exceptions.ParseError(f"JSON parse error - {exc}") from None
    if isinstance(value, dict | list) and nesting_depth_exceeds(value, limit):
        raise exceptions.ParseError(f"JSON parse error - nested deeper than {limit} levels")
    return value


class JSONParser(parsers.JSONParser):
    """JSON with a size and a nesting bound."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        data = read_bounded(stream, parser_context)
        return loads_bounded(data, get_encoding(parser_context or {}))


class FormParser(parsers.FormParser):
    """URL-encoded forms with a size bound; too many fields is a 400."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        data = read_bounded(stream, parser_context)
        try:
            return QueryDict(data, encoding=get_encoding(parser_context or {}))
        except SuspiciousOperation as exc:
            raise exceptions.ParseError(f"Form parse error - {exc}") from None


class MultiPartParser(parsers.MultiPartParser):
    """Multipart uploads with a bound on the whole body; Django's refusals are 400/413."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        limit = upload_limit()
        check_declared_length(parser_context, limit)
        try:
            return super().parse(stream, media_type, parser_context)
        except RequestDataTooBig:
            raise too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) from None
        except SuspiciousOperation as exc:
            raise exceptions.ParseError(f"Multipart form parse error - {exc}") from None
