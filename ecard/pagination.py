"""Pagination of every API list: ``?limit=`` and ``?offset=`` with bounds.

DRF's ``LimitOffsetPagination`` has no maximum by default, so ``?limit=10**20`` reached the
database as a LIMIT it cannot represent (a 500), and it silently replaced malformed values with
the defaults. Here a limit or offset that is not a plain decimal number, a limit outside
1..``ECARD_API_MAX_LIMIT`` (500) and an offset beyond ``MAX_OFFSET`` are 400 problem documents
that say the bound (a client wanting more pages on with the ``next`` links).
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.views import APIView

from ecard.api import query_int

MAX_OFFSET = 2**31 - 1  # far beyond any table of the platform; well inside every database's range


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return int(getattr(settings, "ECARD_API_MAX_LIMIT", 500))

    def get_limit(self, request: Request) -> int | None:
        if not request.query_params.get(self.limit_query_param):
            return self.default_limit
        value = query_int(request, self.limit_query_param, maximum=self.max_limit)
        if value < 1:
            raise ValidationError({self.limit_query_param: ["must be at least 1"]})
        return value

    def get_offset(self, request: Request) -> int:
        return query_int(request, self.offset_query_param, default=0, maximum=MAX_OFFSET)

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, object]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET},
        }
        for parameter in parameters:
            parameter["schema"] = {**parameter.get("schema", {}), **bounds.get(parameter["name"], {})}
        return parameters
