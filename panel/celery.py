"""The one Celery configuration: broker from settings (CELERY_*), queues for long jobs and for monitoring."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")


def _keep_the_broker_address_of_collected_channels() -> None:
    """Work around a worker crash when Redis restarts while a task runs (Celery 5.7 with kombu's Redis transport).

    On a lost broker connection the worker calls ``Connection.collect()``, which detaches the transport from its
    connection (``transport.client = None``), and then closes that connection again. Closing the task channel
    restores its unacknowledged messages (``acks_late``), and a task that finishes later acks on that same
    channel; both build a new Redis pool from ``transport.client``: ``AttributeError: 'NoneType' object has no
    attribute 'hostname'``, which the worker treats as unrecoverable and exits ("Unrecoverable error").
    The channel's connection parameters do not change, so a channel whose transport was detached reuses the
    ones it last built: the restore then fails or succeeds like any Redis call (a connection error is expected
    and ignored there), and the late ack reaches the restarted Redis.
    """
    from kombu.transport import redis as redis_transport

    original = redis_transport.Channel._connparams
    if getattr(original, "panel_workaround", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        remembered: dict[bool, dict[str, Any]] = self.__dict__.setdefault("_panel_connparams", {})
        if self.connection.client is None and asynchronous in remembered:
            return dict(remembered[asynchronous])
        params: dict[str, Any] = original(self, asynchronous=asynchronous)
        remembered[asynchronous] = dict(params)
        return params

    _connparams.panel_workaround = True  # type: ignore[attr-defined]
    redis_transport.Channel._connparams = _connparams  # type: ignore[method-assign]


_keep_the_broker_address_of_collected_channels()

app = Celery("panel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["panel.jobs", "deployments", "backups", "monitoring"])
app.autodiscover_tasks(["monitoring"], related_name="notify")  # alert deliveries and reminders


@app.on_after_finalize.connect
def _periodic_tasks(sender: Celery, **_: object) -> None:
    """Register the job reaper, the backup schedule fan-out and pruning at their configured intervals (synced into django-celery-beat's tables by beat)."""
    from django.conf import settings

    sender.conf.beat_schedule = {
        "reap-stale-jobs": {
            "task": "panel.jobs.tasks.reap_stale_jobs",
            "schedule": settings.JOB_REAPER_INTERVAL,
            "options": {"queue": "monitoring", "expires": settings.JOB_REAPER_INTERVAL},
        },
        # One fan-out for every environment's backup schedule (no entry per environment), and pruning.
        "backup-schedules": {
            "task": "backups.tasks.run_schedules",
            "schedule": settings.BACKUP_SCHEDULE_INTERVAL,
            "options": {"queue": "monitoring", "expires": settings.BACKUP_SCHEDULE_INTERVAL},
        },
        "prune-backups": {
            "task": "backups.tasks.prune_backups",
            "schedule": settings.BACKUP_PRUNE_INTERVAL,
            "options": {"queue": "monitoring", "expires": settings.BACKUP_PRUNE_INTERVAL},
        },
        # Alerts: deliveries whose task was lost or whose worker died mid-send, and reminders of open incidents.
        "deliver-notifications": {
            "task": "monitoring.notify.deliver_due",
            "schedule": settings.MONITOR_NOTIFY_SWEEP_INTERVAL,
            "options": {"queue": "monitoring", "expires": settings.MONITOR_NOTIFY_SWEEP_INTERVAL},
        },
        "incident-reminders": {
            "task": "monitoring.notify.send_reminders",
            "schedule": 60.0,
            "options": {"queue": "monitoring", "expires": 60},
        },
        # Hourly and daily rollups of the health samples, and pruning past retention (idempotent).
        "monitoring-rollup": {
            "task": "monitoring.tasks.rollup",
            "schedule": settings.MONITOR_ROLLUP_INTERVAL,
            "options": {"queue": "monitoring", "expires": settings.MONITOR_ROLLUP_INTERVAL},
        },
    }
    if settings.MONITOR_INTERVAL:
        # Fleet polling: one fan-out per interval, which enqueues one cycle per server (monitoring.tasks.poll_server).
        sender.conf.beat_schedule["poll-fleet"] = {
            "task": "monitoring.tasks.poll_fleet",
            "schedule": settings.MONITOR_INTERVAL,
            "options": {"queue": "monitoring", "expires": settings.MONITOR_INTERVAL},
        }
