"""Periodic Celery tasks of backups (registered in ``panel/celery.py``, on the monitoring queue): thin wrappers."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

# Importing the verify module registers the verify job's handler in the worker (Celery imports this module).
from backups import scheduling, verify  # noqa: F401


@shared_task(name="backups.tasks.run_schedules", ignore_result=True)
def run_schedules() -> int:
    """Start the scheduled backups that are due and record the overdue flag; returns how many started."""
    return len(scheduling.run_schedules(timezone.now()).started)


@shared_task(name="backups.tasks.prune_backups", ignore_result=True)
def prune_backups() -> int:
    """Apply retention to every environment's backups; returns how many backups were deleted."""
    return len(scheduling.prune(timezone.now()).backups)
