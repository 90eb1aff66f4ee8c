"""The one reading of an environment's health for every reader (dashboard, environment page and API, live
sockets, status pages, /metrics): the stored state, unless it is too old to be true."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from monitoring.models import EnvironmentHealth, HealthState


def stale_after() -> timedelta | None:
    """How old a poll may be before its state is no longer believed: ``MONITOR_STALE_SECONDS``, or by default three
    cycles plus a cycle's time limit. None when polling is off (``MONITOR_INTERVAL=0``): nothing is expected."""
    if settings.MONITOR_INTERVAL <= 0:
        return None
    seconds = settings.MONITOR_STALE_SECONDS or 3 * settings.MONITOR_INTERVAL + settings.MONITOR_SERVER_TIMEOUT
    return timedelta(seconds=seconds)


def is_stale(polled_at: datetime | None, now: datetime | None = None) -> bool:
    """True when the newest poll is older than ``stale_after()`` (the pollers stopped, or this server's cycles)."""
    limit = stale_after()
    if limit is None or polled_at is None:
        return False
    return (now or timezone.now()) - polled_at > limit


def health_state(health: EnvironmentHealth | None, now: datetime | None = None) -> str:
    """The environment's health state: *unknown* without a poll, or when the newest one is stale (a stopped
    monitoring worker must not leave a page saying *up* for hours); else the stored state."""
    if health is None or is_stale(health.polled_at, now):
        return HealthState.UNKNOWN
    return str(health.state)


def health_message(health: EnvironmentHealth | None, now: datetime | None = None) -> str:
    """Why the environment is in its ``health_state``, in words a person can act on."""
    if health is None:
        return "Not polled yet."
    if is_stale(health.polled_at, now):
        assert health.polled_at is not None
        when = timezone.localtime(health.polled_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        return f"Not polled since {when}: is the monitoring worker (Celery, queue 'monitoring') and beat running?"
    return health.message
