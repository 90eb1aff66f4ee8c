"""What monitoring adds to the panel through ``panel.extensions``, registered in ``MonitoringConfig.ready()``.

Each part of monitoring adds its ``Contribution`` subclass here and lists an instance in ``contributions()``.
"""

from __future__ import annotations

from typing import Any

from monitoring.alert_api import IncidentViewSet, MaintenanceWindowViewSet, NotificationChannelViewSet
from monitoring.dashboard_views import environment_health_context
from monitoring.health_api import EnvironmentHealthActions, environment_fields
from monitoring.metrics import install_process_hooks
from monitoring.status_api import StatusPageViewSet
from panel.extensions import Contribution, Page


class EnvironmentMonitoring(Contribution):
    """Monitoring's routes: the HTML pages (``monitoring.urls``) and the websockets (``monitoring.ws_urls``)."""

    name = "monitoring.environment"
    model = "environment"
    order = 300
    html_urls = "monitoring.urls"
    websocket_urls = "monitoring.ws_urls"


class EnvironmentLogs(Contribution):
    """The *Logs* button of the environment page (staff: customers never see application logs)."""

    name = "monitoring.logs"
    model = "environment"
    order = 310
    templates = {"actions": "monitoring/_logs_action.html"}

    def context(self, page: Page) -> dict[str, Any]:
        return {"logs_visible": page.show_details}


class EnvironmentHealthSection(Contribution):
    """The *Health* section of the environment page (live state, uptimes, checks, incidents, charts), the health
    fields of the environment API and its ``health`` / ``health-history`` routes (``monitoring.health_api``)."""

    name = "monitoring.health"
    model = "environment"
    order = 300
    templates = {"sections": "monitoring/_environment_health.html"}
    viewset_mixins = (EnvironmentHealthActions,)
    customer_fields = ("health_state", "uptime")

    def context(self, page: Page) -> dict[str, Any]:
        return environment_health_context(page.request, page.obj, show_details=page.show_details)

    def serializer_fields(self) -> dict[str, Any]:
        return environment_fields()


class Alerts(Contribution):
    """The API collections of alerts (``monitoring.alert_api``): notification channels, maintenance windows and
    incidents. They belong to an organization; the contribution hangs off the server model, like backup storages,
    and adds nothing to the server page; its HTML pages are ``monitoring.alert_urls``."""

    name = "monitoring.alerts"
    model = "server"
    order = 300
    api_routes = (
        ("notification-channels", NotificationChannelViewSet, "notification-channel"),
        ("maintenance-windows", MaintenanceWindowViewSet, "maintenance-window"),
        ("incidents", IncidentViewSet, "incident"),
    )
    html_urls = "monitoring.alert_urls"


class StatusPages(Contribution):
    """Status pages (``/status/...``, ``/api/v1/status-pages/``) and ``/metrics`` (``monitoring.status_urls``).
    Status pages belong to organizations; the contribution hangs off the server model, like the alerts, and adds
    nothing to the server page. Loading it also installs this process's metrics counting hooks."""

    name = "monitoring.status"
    model = "server"
    order = 320
    api_routes = (("status-pages", StatusPageViewSet, "status-page"),)
    html_urls = "monitoring.status_urls"

    def __init__(self) -> None:
        install_process_hooks()


def contributions() -> list[Contribution]:
    """The contributions ``MonitoringConfig.ready()`` registers."""
    return [EnvironmentMonitoring(), EnvironmentHealthSection(), EnvironmentLogs(), Alerts(), StatusPages()]
