"""What monitoring adds to the panel through ``panel.extensions``, registered in ``MonitoringConfig.ready()``.

Each part of monitoring adds its ``Contribution`` subclass here and lists an instance in ``contributions()``.
"""

from __future__ import annotations

from monitoring.alert_api import IncidentViewSet, MaintenanceWindowViewSet, NotificationChannelViewSet
from panel.extensions import Contribution


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


def contributions() -> list[Contribution]:
    """The contributions ``MonitoringConfig.ready()`` registers."""
    return [Alerts()]
