"""The Doodba panel: Django project and core (tenancy, inventory, remote access, jobs)."""

from panel.celery import app as celery_app

__all__ = ["celery_app"]
