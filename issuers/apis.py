"""REST API views of the issuers app: thin, over selectors and services."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from issuers import selectors


class WhoAmIApi(APIView):
    """The signed-in user (session or token)."""

    @extend_schema(
        responses=inline_serializer("WhoAmI", {"username": serializers.CharField()}),
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.user_profile(request.user))
