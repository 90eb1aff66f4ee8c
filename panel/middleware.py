"""Security headers not covered by Django's SecurityMiddleware, and the guard against unstorable input."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from panel.streamed_body import is_streamed
from panel.validators import unstorable_text

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class ContentSecurityPolicyMiddleware:
    """Send a CSP without inline scripts or styles on every response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


def unstorable_input(request: HttpRequest) -> str | None:
    """Why the path, query string or form data cannot be stored (a NUL character), or None.

    Django decodes these with replacement characters, so lone surrogates never appear here; JSON bodies are
    checked by the API's parsers (``panel.api``) and webhook payloads by the webhook view.
    """
    fields = [request.path, *(text for key, values in request.GET.lists() for text in (key, *values))]
    # A streamed upload's form is its view's to read (parsing it here would stage the upload on disk).
    form_types = ("application/x-www-form-urlencoded", "multipart/form-data")
    if request.method == "POST" and request.content_type in form_types and not is_streamed(request.path):
        fields += [text for key, values in request.POST.lists() for text in (key, *values)]
    for text in fields:
        problem = unstorable_text(text)
        if problem:
            return problem
    return None


class RefuseUnstorableInputMiddleware:
    """Answer 400 to a NUL character anywhere in the path, the query string or the form data.

    PostgreSQL cannot store or compare text holding NUL: such a value in a filter, a lookup or an audit record
    raises inside the database driver (a 500). Refusing it once, here, covers every view and every field.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = unstorable_input(request)
        if problem is None:
            return self.get_response(request)
        message = f"The request contains {problem}, which is not allowed."
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": message}, status=400)
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
