"""Monitoring's websocket routes (added to ``panel.routing`` through ``monitoring.extensions``)."""

from django.urls import path

from monitoring.consumers import HealthConsumer
from monitoring.log_consumers import ContainerLogConsumer

websocket_urlpatterns: list = [  # type: ignore[type-arg]
    path("ws/health/", HealthConsumer.as_asgi()),
    path("ws/environments/<int:environment_id>/logs/<str:service>/", ContainerLogConsumer.as_asgi()),
]
