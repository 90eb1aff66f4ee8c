"""HTML answer for a job the broker could not take: 503 with the reason, never a 500."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from panel.jobs.services import QueueUnavailable


class QueueUnavailableMiddleware:
    """Turn ``QueueUnavailable`` from any view into a 503 page that says what happened and what to do."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, QueueUnavailable):
            return None
        page = render_to_string("jobs/queue_unavailable.html", {"message": str(exception)}, request=request)
        return HttpResponse(page, status=503, headers={"Retry-After": "30"})
