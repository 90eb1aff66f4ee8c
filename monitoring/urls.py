"""Monitoring's HTML routes (included at the root through ``monitoring.extensions``)."""

from django.urls import path  # noqa: F401

urlpatterns: list = []  # type: ignore[type-arg]
