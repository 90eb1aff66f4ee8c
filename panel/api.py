"""API-wide pieces: error bodies, bounded pages and request parsers that refuse what PostgreSQL cannot store
(``panel.api_schema`` documents the error answers in the OpenAPI schema).

Error bodies are of two shapes, and the schema says which operation answers which:

- ``{"detail": "words"}`` for every refusal that is not about a field: 401, 403, 404, 405, 406, 409, 415, and the
  400s of actions (``{"detail", "job"}`` for a 409 whose target is held by a job);
- ``{"field": ["message", ...], ...}`` (``non_field_errors`` for the whole object; nested for mappings and lists,
  such as ``{"secrets": {"NAME": ["message"]}}``) for invalid input, 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import Http404
from rest_framework import exceptions
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from panel.validators import unstorable_text


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler with three changes: one 404 body whether an object does not exist or belongs to another
    organization, a 400 body that is always an object (a bare list of messages becomes ``non_field_errors``), and
    503 ``{"detail", "job"}`` for a job the broker could not take (the job is ended at once: it holds no lock)."""
    # Imported here: DRF's APIView reads this module's parsers from the settings while rest_framework.views loads.
    from rest_framework.views import exception_handler as drf_exception_handler

    from panel.jobs.services import QueueUnavailable

    if isinstance(exc, Http404):
        return Response({"detail": "Not found."}, status=404)
    if isinstance(exc, QueueUnavailable):
        return Response({"detail": str(exc), "job": exc.job.pk}, status=503, headers={"Retry-After": "30"})
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, list):
        response.data = {"non_field_errors": response.data}
    return response


class PanelPagination(LimitOffsetPagination):
    """``?limit=&offset=`` pages; ``limit`` is capped at ``API_MAX_PAGE_SIZE`` (a bigger one gets that many)."""

    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return int(settings.API_MAX_PAGE_SIZE)

    def get_limit(self, request: Any) -> int | None:
        # DRF caps only a limit that was asked for; the default page (API_PAGE_SIZE) is capped too.
        limit = super().get_limit(request)
        return None if limit is None else min(limit, self.max_limit)


def unstorable_in(data: Any) -> str | None:
    """Why some text in ``data`` (any key or value, at any depth) cannot be stored, or None."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = unstorable_text(item)
            if problem:
                return problem
        elif isinstance(item, Mapping):
            for key in item:
                stack.append(key)
                stack.extend(item.getlist(key) if hasattr(item, "getlist") else [item[key]])
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def check_storable(data: Any) -> None:
    """Refuse (400) a request body holding text PostgreSQL cannot store: a NUL character or a lone surrogate.

    Field validation catches a NUL in text fields, but not a lone surrogate, which then raises in the database
    driver (a 500); this check covers every field, JSON fields and keys included. The error names the field.
    """
    if isinstance(data, Mapping):
        errors = {}
        for key in data:
            values = data.getlist(key) if hasattr(data, "getlist") else [data[key]]
            problem = unstorable_in(values)
            if problem:
                errors[key] = [f"This contains {problem}, which cannot be stored."]
        problem = unstorable_in(list(data))
        if problem:
            errors = {"non_field_errors": [f"A field name contains {problem}."]}
    else:
        problem = unstorable_in(data)
        errors = {"non_field_errors": [f"The request contains {problem}, which cannot be stored."]} if problem else {}
    if errors:
        raise exceptions.ValidationError(errors)


class PanelJSONParser(JSONParser):
    """JSON bodies, refusing NUL characters and lone surrogates (``check_storable``)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        check_storable(data)
        return data


class PanelFormParser(FormParser):
    """Form bodies, refusing NUL characters (``check_storable``)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        check_storable(data)
        return data


class PanelMultiPartParser(MultiPartParser):
    """Multipart bodies, refusing NUL characters in their fields (``check_storable``)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        check_storable(parsed.data)
        return parsed
