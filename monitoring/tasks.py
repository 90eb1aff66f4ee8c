"""Periodic Celery tasks of monitoring (registered in ``panel/celery.py``, on the monitoring queue): thin wrappers."""

from __future__ import annotations

from celery import shared_task

from monitoring import history


@shared_task(name="monitoring.tasks.rollup", ignore_result=True)
def rollup() -> dict[str, int]:
    """Build the hourly and daily rollups of environments and servers and prune past retention (idempotent)."""
    return history.rollup()
