"""Monitoring's websocket routes (added to ``panel.routing`` through ``monitoring.extensions``)."""

from django.urls import path  # noqa: F401

websocket_urlpatterns: list = []  # type: ignore[type-arg]
