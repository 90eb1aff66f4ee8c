"""Websocket routes of every app."""

from django.urls import path

from panel.jobs.consumers import JobLogConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobLogConsumer.as_asgi()),
]
