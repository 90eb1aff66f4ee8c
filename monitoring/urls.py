"""Monitoring's HTML routes (included at the root through ``monitoring.extensions``)."""

from django.urls import path

from monitoring import log_views
from monitoring.dashboard_views import dashboard

urlpatterns: list = [  # type: ignore[type-arg]
    path("dashboard/", dashboard, name="dashboard"),
    path("environments/<int:environment_id>/logs/", log_views.environment_logs, name="environment_logs"),
    path(
        "environments/<int:environment_id>/logs/<str:service>/",
        log_views.environment_logs,
        name="environment_service_logs",
    ),
    path(
        "environments/<int:environment_id>/logs/<str:service>/download/",
        log_views.environment_logs_download,
        name="environment_logs_download",
    ),
]
