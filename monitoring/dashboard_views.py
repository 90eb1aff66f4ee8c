"""The fleet dashboard: the staff's home page (``/dashboard/``, URL name ``dashboard``).

Every environment of the current organization (and those it manages) with its health state, uptime and last
deploy, and every server with its load and disk; problems first (down, degraded, unknown, maintenance, then up;
unreachable servers and full disks first). ``static/monitoring/dashboard.js`` keeps it current over the health
socket (``monitoring.consumers``) without a reload. Staff roles only: customers have no dashboard (404), they
start on their projects.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from monitoring import history
from monitoring.live import STATE_RANK, environment_payload, server_payload
from monitoring.models import CheckState, EnvironmentHealth, HealthState, Incident, ServerHealth
from panel.accounts.choices import Action
from panel.accounts.scoping import for_user, organization_ids
from panel.inventory.models import Environment, Server
from panel.inventory.views import in_current_organization


def _health(obj: Any) -> Any:
    """The reverse one-to-one ``health`` row, or None while the poller never wrote one."""
    try:
        return obj.health
    except (EnvironmentHealth.DoesNotExist, ServerHealth.DoesNotExist):
        return None


def dashboard_rows(request: HttpRequest) -> dict[str, list[dict[str, Any]]]:
    """The dashboard's environments and servers, problems first, in a fixed number of queries."""
    environments = list(
        in_current_organization(
            request,
            for_user(Environment, request.user, Action.VIEW_DETAILS).select_related(
                "project", "server", "current_deployment", "health"
            ),
            "project__organization",
        )
    )
    uptimes = history.uptime([env.pk for env in environments])
    env_rows = []
    for env in environments:
        health = _health(env)
        payload = environment_payload(env.pk, health, uptimes.get(env.pk))
        deployment = env.current_deployment
        env_rows.append(
            {
                "environment": env,
                "health": payload,
                "rank": STATE_RANK.get(payload["state"], STATE_RANK[HealthState.UNKNOWN]),
                "deployed_at": (deployment.finished_at or deployment.created_at) if deployment else None,
                "deployed_commit": deployment.commit[:12] if deployment else "",
            }
        )
    env_rows.sort(key=lambda row: (row["rank"], row["environment"].project.name, row["environment"].name))
    servers = list(
        in_current_organization(
            request, for_user(Server, request.user, Action.VIEW_DETAILS).select_related("health"), "organization"
        )
    )
    server_rows = [
        {"server": server, "health": server_payload(server.pk, _health(server), server.organization_id)}
        for server in servers
    ]
    server_rows.sort(key=lambda row: (server_rank(row["health"]), row["server"].name))
    return {"environments": env_rows, "servers": server_rows}


def server_rank(health: dict[str, Any]) -> tuple[int, float]:
    """Unreachable first, then never polled, then the fullest disk."""
    reachable = health["reachable"]
    group = 0 if reachable is False else 1 if reachable is None else 2
    return group, -(health["disk_percent"] or 0.0)


@require_GET
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The fleet at a glance, kept live."""
    if not organization_ids(request.user, Action.VIEW_DETAILS):
        raise Http404("Not found.")
    rows = dashboard_rows(request)
    problems = sum(1 for row in rows["environments"] if row["rank"] < STATE_RANK[HealthState.UNKNOWN])
    return render(request, "monitoring/dashboard.html", {**rows, "problems": problems})


def environment_health_context(request: HttpRequest, environment: Environment, *, show_details: bool) -> dict[str, Any]:
    """The environment page's Health section: state and since when, uptimes, open incidents; for staff the checks
    with their messages and the response times; the charts' series URL and the live socket's path."""
    health = EnvironmentHealth.objects.filter(environment=environment).first()
    payload = environment_payload(environment.pk, health, history.uptime([environment.pk]).get(environment.pk))
    return {
        "health": payload,
        "health_windows": [(window, payload["uptime"].get(window)) for window in history.WINDOWS],
        "health_checks": list(CheckState.objects.filter(environment=environment).order_by("name"))
        if show_details
        else [],
        "health_incidents": list(
            Incident.objects.filter(environment=environment, closed_at__isnull=True).order_by("-opened_at")[:20]
        ),
        "health_history_url": reverse("api:environment-health-history", args=[environment.pk]),
        "health_ws_path": f"/ws/health/?environment={environment.pk}",
    }
