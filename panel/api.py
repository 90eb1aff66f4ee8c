"""API-wide pieces: the exception handler that keeps error bodies short and free of internals."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Answer 404 with the same body whether an object does not exist or belongs to another organization."""
    if isinstance(exc, Http404):
        return Response({"detail": "Not found."}, status=404)
    return drf_exception_handler(exc, context)
