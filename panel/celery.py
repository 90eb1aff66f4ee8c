"""The one Celery configuration: broker from settings (CELERY_*), queues for long jobs and for monitoring."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

app = Celery("panel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["panel.jobs", "deployments", "backups", "monitoring"])


@app.on_after_finalize.connect
def _periodic_tasks(sender: Celery, **_: object) -> None:
    """Register the job reaper at the configured interval (synced into django-celery-beat's tables by beat)."""
    from django.conf import settings

    sender.conf.beat_schedule = {
        "reap-stale-jobs": {
            "task": "panel.jobs.tasks.reap_stale_jobs",
            "schedule": settings.JOB_REAPER_INTERVAL,
            "options": {"queue": "monitoring", "expires": settings.JOB_REAPER_INTERVAL},
        },
    }
