"""Websocket routes of every app: the job log here, and those feature apps contribute (``panel.extensions``)."""

from importlib import import_module

from django.urls import path

from panel import extensions
from panel.jobs.consumers import JobLogConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobLogConsumer.as_asgi()),
    *(route for module in extensions.websocket_urls() for route in import_module(module).websocket_urlpatterns),
]
