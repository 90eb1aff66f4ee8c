"""The mail catcher pages of an environment (staff who may see its details; never customers, never production).

- ``/environments/{id}/mails/``: the list (from, to, subject, date), newest first, with search and pages;
- ``/environments/{id}/mails/{message}/``: one mail as text, headers and attachments, its HTML in a sandboxed
  iframe whose document is ``.../html/``: served with a CSP that allows no script (``sandbox`` included, so even
  opened on its own it runs nothing), framable only by the panel itself;
- ``.../attachments/{part}/``: an attachment, always as a download;
- ``POST /environments/{id}/mails/delete/`` (``change``, CSRF): delete every caught mail (audited).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET, require_POST

from mailcatcher import services
from mailcatcher.adapters import SEARCH_KINDS, CatcherError, Mail, MailNotFound, check_message_id
from panel.accounts.choices import Action
from panel.accounts.scoping import can, get_for_user
from panel.inventory.models import Environment

# The caught mail's own HTML: no script, no request anywhere (inline styles and data: images only), no form,
# no navigation of the panel, and a sandbox even when opened outside the iframe.
HTML_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src data:",
        "font-src 'none'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
        "sandbox",
    ]
)
MAX_PAGE = 100_000


def environment_for(request: HttpRequest, environment_id: int, action: str = Action.VIEW_DETAILS) -> Environment:
    """The environment, if the user may ``action`` it and it may have a catcher (else 404, like an unknown id)."""
    environment = get_for_user(
        Environment.objects.select_related("server", "project"), request.user, action, pk=environment_id
    )
    if not services.has_catcher_kind(environment):
        raise Http404("Production environments have no mail catcher.")
    return environment


def search_params(request: HttpRequest) -> tuple[str, str, int]:
    """``(query, kind, page)`` from the query string; odd values fall back to the defaults."""
    query = request.GET.get("q", "").strip()[:200]
    kind = request.GET.get("kind", "any")
    if kind not in SEARCH_KINDS:
        kind = "any"
    try:
        page = min(max(1, int(request.GET.get("page", "1"))), MAX_PAGE)
    except ValueError:
        page = 1
    return query, kind, page


@require_GET
@login_required
def mail_list(request: HttpRequest, environment_id: int) -> HttpResponse:
    """The caught mails, newest first, with search."""
    environment = environment_for(request, environment_id)
    query, kind, page = search_params(request)
    size = settings.MAILCATCHER_PAGE_SIZE
    context = {
        "environment": environment,
        "query": query,
        "kind": kind,
        "kinds": SEARCH_KINDS,
        "may_change": can(request.user, Action.CHANGE, environment),
        "error": "",
        "mails": [],
        "catcher": None,
    }
    try:
        catcher = services.locate(environment)
        result = services.list_mails(environment=environment, start=(page - 1) * size, query=query, search_kind=kind)
    except services.CatcherUnavailable as exc:
        context["error"] = str(exc)
        return render(request, "mailcatcher/list.html", context, status=503)
    except CatcherError as exc:
        context["error"] = str(exc)
        return render(request, "mailcatcher/list.html", context, status=502)
    base = {"q": query, "kind": kind} if query else {}
    context.update(
        catcher=catcher,
        mails=result.items,
        total=result.total,
        page=page,
        first=(page - 1) * size + 1 if result.items else 0,
        last=(page - 1) * size + len(result.items),
        newer=urlencode({**base, "page": page - 1}) if page > 1 else "",
        older=urlencode({**base, "page": page + 1}) if page * size < result.total else "",
    )
    return render(request, "mailcatcher/list.html", context)


def _mail(request: HttpRequest, environment: Environment, message_id: str) -> Mail:
    try:
        return services.get_mail(environment=environment, message_id=check_message_id(message_id))
    except MailNotFound as exc:
        raise Http404("No such mail.") from exc


@require_GET
@login_required
def mail_detail(request: HttpRequest, environment_id: int, message_id: str) -> HttpResponse:
    """One mail: summary, text, headers, attachments and the sandboxed HTML view."""
    environment = environment_for(request, environment_id)
    try:
        mail = _mail(request, environment, message_id)
    except (services.CatcherUnavailable, CatcherError) as exc:
        context = {"environment": environment, "error": str(exc), "mails": [], "kinds": SEARCH_KINDS}
        return render(request, "mailcatcher/list.html", context, status=503)
    context = {"environment": environment, "mail": mail}
    return render(request, "mailcatcher/detail.html", context)


@require_GET
@login_required
@xframe_options_sameorigin
def mail_html(request: HttpRequest, environment_id: int, message_id: str) -> HttpResponse:
    """The mail's HTML body as its own document, under ``HTML_POLICY`` (for the detail page's iframe)."""
    environment = environment_for(request, environment_id)
    try:
        mail = _mail(request, environment, message_id)
    except (services.CatcherUnavailable, CatcherError) as exc:
        return HttpResponse(f"{exc}\n", status=503, content_type="text/plain; charset=utf-8")
    response = HttpResponse(mail.html, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = HTML_POLICY
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@login_required
def mail_attachment(request: HttpRequest, environment_id: int, message_id: str, part: str) -> HttpResponse:
    """One attachment, as a download (never rendered by the browser)."""
    environment = environment_for(request, environment_id)
    try:
        found = services.get_part(environment=environment, message_id=check_message_id(message_id), part=part)
    except MailNotFound as exc:
        raise Http404("No such attachment.") from exc
    except (services.CatcherUnavailable, CatcherError) as exc:
        return HttpResponse(f"{exc}\n", status=503, content_type="text/plain; charset=utf-8")
    response = HttpResponse(found.data, content_type="application/octet-stream")
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(found.filename, safe='')}"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


@require_POST
@login_required
def mail_delete_all(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Delete every mail the catcher holds (operators and owners)."""
    environment = environment_for(request, environment_id, Action.CHANGE)
    try:
        services.delete_all(environment=environment, actor=request.user, request=request)
    except (services.CatcherUnavailable, CatcherError) as exc:
        messages.error(request, f"The mails could not be deleted: {exc}")
    else:
        messages.success(request, "Every caught mail was deleted.")
    return redirect("mailcatcher_list", environment.pk)
