"""Periodic Celery tasks of monitoring (registered in ``panel/celery.py``, on the monitoring queue): thin wrappers."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from monitoring import history, poller


@shared_task(name="monitoring.tasks.rollup", ignore_result=True)
def rollup() -> dict[str, int]:
    """Build the hourly and daily rollups of environments and servers and prune past retention (idempotent)."""
    return history.rollup()


@shared_task(name="monitoring.tasks.poll_fleet", ignore_result=True)
def poll_fleet() -> int:
    """Enqueue one poll cycle per confirmed server; a cycle not started within the interval expires (a slow server's
    cycles never pile up). Returns how many were enqueued."""
    expires = settings.MONITOR_INTERVAL or settings.MONITOR_SERVER_TIMEOUT
    server_ids = poller.servers_to_poll()
    for server_id in server_ids:
        poll_server.apply_async((server_id,), queue="monitoring", expires=expires)
    return len(server_ids)


# The hard limit leaves room for the SSH connect and the recording after the remote part's own timeout.
@shared_task(name="monitoring.tasks.poll_server", ignore_result=True, time_limit=300)
def poll_server(server_id: int) -> None:
    """One poll cycle of one server (monitoring.poller.poll_server)."""
    poller.poll_server(server_id)
