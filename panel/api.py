"""API-wide pieces: the exception handler that keeps error bodies short and free of internals."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from panel.jobs.services import QueueUnavailable


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Answer 404 with the same body whether an object does not exist or belongs to another organization.

    A job the broker could not take answers 503 (the job is ended at once, so it holds no lock).
    """
    if isinstance(exc, Http404):
        return Response({"detail": "Not found."}, status=404)
    if isinstance(exc, QueueUnavailable):
        return Response({"detail": str(exc), "job": exc.job.pk}, status=503, headers={"Retry-After": "30"})
    return drf_exception_handler(exc, context)
