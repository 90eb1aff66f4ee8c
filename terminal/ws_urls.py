"""The terminal's websocket route (added to ``panel.routing`` through ``terminal.extensions``)."""

from django.urls import path

from terminal.consumers import TerminalConsumer

websocket_urlpatterns: list = [  # type: ignore[type-arg]
    path("ws/environments/<int:environment_id>/terminal/", TerminalConsumer.as_asgi()),
]
