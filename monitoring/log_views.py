"""The Logs page of an environment and the download of a time range (staff only: customers never see them)."""

from __future__ import annotations

import datetime

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from monitoring.logs import LogsUnavailable, download_chunks, environment_services, parse_range
from panel.accounts.choices import Action
from panel.accounts.scoping import get_for_user
from panel.inventory.models import Environment
from panel.remote.errors import RemoteError
from panel.remote.ssh import Target


def _environment(request: HttpRequest, environment_id: int) -> Environment:
    queryset = Environment.objects.select_related("server", "project")
    return get_for_user(queryset, request.user, Action.VIEW_DETAILS, pk=environment_id)


@require_GET
@login_required
def environment_logs(request: HttpRequest, environment_id: int, service: str = "") -> HttpResponse:
    """One service's live log (``odoo`` by default), with the environment's other services to pick from."""
    environment = _environment(request, environment_id)
    try:
        services = environment_services(environment)
        error = ""
    except LogsUnavailable as exc:
        services, error = {}, str(exc)
    if service and service not in services and not error:
        raise Http404("No such service.")
    if not service and services:
        service = "odoo" if "odoo" in services else next(iter(services))
    now = timezone.localtime()
    context = {
        "environment": environment,
        "services": list(services),
        "service": service if service in services else "",
        "error": error,
        "browser_lines": settings.MONITOR_LOG_BROWSER_LINES,
        "default_since": (now - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "default_until": now.strftime("%Y-%m-%dT%H:%M"),
        "time_zone": timezone.get_current_timezone_name(),
    }
    return render(request, "monitoring/logs.html", context)


@require_GET
@login_required
def environment_logs_download(
    request: HttpRequest, environment_id: int, service: str
) -> HttpResponse | StreamingHttpResponse:
    """``docker logs --timestamps`` of the service between ``since`` and ``until`` (default now), streamed."""
    environment = _environment(request, environment_id)
    try:
        start, end = parse_range(request.GET.get("since", ""), request.GET.get("until", ""))
    except ValueError as exc:
        return HttpResponse(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")
    try:
        services = environment_services(environment)
        target = Target.for_server(environment.server)
    except (LogsUnavailable, RemoteError) as exc:
        return HttpResponse(f"{exc}\n", status=503, content_type="text/plain; charset=utf-8")
    if service not in services:
        raise Http404("No such service.")
    response = StreamingHttpResponse(
        download_chunks(target, services[service], start, end), content_type="text/plain; charset=utf-8"
    )
    name = f"{environment.compose_project}-{service}-{start:%Y%m%d-%H%M}-{end:%Y%m%d-%H%M}.log"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
