"""Prometheus: ``GET /metrics`` (``Authorization: Bearer <MONITOR_METRICS_TOKEN>``; without the setting it answers
404, with a missing or wrong token 401) and the per-process counters behind it.

Series (every label has bounded cardinality: ids, kinds, states, check names, windows; never messages):

- ``panel_jobs{kind, state}``: jobs in the database by kind and state, at scrape time;
- ``panel_job_duration_seconds{kind}``: histogram of finished jobs' run time (started to finished);
- ``panel_poll_cycle_seconds{server}``, ``panel_server_reachable{server}``: the newest poll cycle of each server;
- ``panel_ssh_connections_open``: SSH connections open in the pools of all panel processes (each process writes
  its count to Redis with a TTL, refreshed on use; ``panel_ssh_reporting_processes`` says how many reported);
- ``panel_channel_layer_sends_total`` / ``panel_channel_layer_drops_total``: live pushes handed to the channel layer
  and those it refused (Redis counters every process increments);
- ``panel_environment_info{environment, organization, project, name, kind}`` (1), ``panel_environment_state{
  environment, state}`` (1 for the current state, 0 for the others), ``panel_environment_uptime_ratio{environment,
  window}`` (24h, 7d, 30d), ``panel_environment_response_seconds{environment, endpoint}`` (http, websocket);
- ``panel_check_failing{environment, check}`` (1 failing, 0 not), ``panel_check_value{environment, check}`` (the
  check's measured value where it has one), ``panel_incidents_open{environment}``;
- ``panel_metrics_redis_up``: 0 when the process counters could not be read.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring import checks, history
from monitoring.models import CheckState, CheckStatus, EnvironmentHealth, HealthState, Incident, ServerHealth
from monitoring.services import is_stale

logger = logging.getLogger(__name__)

PREFIX = "panel:metrics:"
COUNTERS_KEY = f"{PREFIX}counters"
SSH_KEY = f"{PREFIX}ssh:"
# Upper bounds of the job duration histogram (seconds): a check takes seconds, a deploy minutes, a backup hours.
JOB_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600)
UPTIME_WINDOWS = ("24h", "7d", "30d")


class _Reporter:
    """This process's contribution: counter increments (added to Redis hashes, kept locally while Redis is away)
    and the number of open SSH connections (a key per process with a TTL, rewritten when it changes and at least
    every third of the TTL while the pool is used)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: Counter[str] = Counter()
        self.ssh_open: int | None = None
        self.ssh_written: tuple[int, float] | None = None
        self.retry_at = 0.0
        self.pid = 0
        self.client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        if self.client is None or self.pid != os.getpid():
            self.pid = os.getpid()
            self.client = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
            )
        return self.client

    def count(self, name: str, amount: int = 1) -> None:
        """Add to the cluster-wide counter ``name``."""
        with self.lock:
            self.pending[name] += amount
            self._flush()

    def ssh_connections(self, count: int) -> None:
        """The pool of this process now holds ``count`` connections."""
        with self.lock:
            self.ssh_open = count
            self._flush()

    def flush(self) -> None:
        """Write what this process still holds (after Redis was away)."""
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        now = time.monotonic()
        if now < self.retry_at:
            return
        ttl = settings.MONITOR_METRICS_PROCESS_TTL
        ssh_due = self.ssh_open is not None and (
            self.ssh_written is None or self.ssh_written[0] != self.ssh_open or now - self.ssh_written[1] > ttl / 3
        )
        if not self.pending and not ssh_due:
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            for name, amount in self.pending.items():
                pipe.hincrby(COUNTERS_KEY, name, amount)
            if ssh_due and self.ssh_open is not None:
                pipe.set(f"{SSH_KEY}{socket.gethostname()}:{os.getpid()}", self.ssh_open, ex=ttl)
            pipe.execute()
        except redis.RedisError as exc:
            # Metrics never slow the panel down: wait a little before trying again, keep the counts meanwhile.
            self.retry_at = now + 5.0
            logger.debug("could not report metrics to Redis: %s", exc)
            return
        self.pending.clear()
        if ssh_due and self.ssh_open is not None:
            self.ssh_written = (self.ssh_open, now)


REPORTER = _Reporter()


def _channel_outcome(outcome: str) -> None:
    REPORTER.count("channel_sends" if outcome == "sent" else "channel_drops")


def install_process_hooks() -> None:
    """Count this process's channel-layer pushes and SSH pool size (idempotent; called when the app loads)."""
    from panel.jobs import publisher
    from panel.remote import ssh

    if _channel_outcome not in publisher.LISTENERS:
        publisher.LISTENERS.append(_channel_outcome)
    if REPORTER.ssh_connections not in ssh.POOL_LISTENERS:
        ssh.POOL_LISTENERS.append(REPORTER.ssh_connections)


def process_totals() -> dict[str, int] | None:
    """The cluster-wide counters and the SSH connections open over all reporting processes (None: Redis away)."""
    REPORTER.flush()
    try:
        client = REPORTER._redis()
        stored = cast(dict[bytes, bytes], client.hgetall(COUNTERS_KEY))
        counters = {key.decode(): int(value) for key, value in stored.items()}
        keys = list(client.scan_iter(match=f"{SSH_KEY}*", count=500))
        values = cast(list[bytes | None], client.mget(keys)) if keys else []
    except redis.RedisError:
        return None
    counts = [int(value) for value in values if value is not None]
    return {**counters, "ssh_open": sum(counts), "ssh_processes": len(counts)}


def _job_durations() -> list[tuple[Any, ...]]:
    """Per job kind: (kind, count, total seconds, cumulative count per ``JOB_BUCKETS`` bound) of finished jobs. One
    aggregate query on PostgreSQL; elsewhere (SQLite, one machine) the start and end times are summed here."""
    from panel.jobs.models import Job

    finished = Job.objects.filter(finished_at__isnull=False, started_at__isnull=False)
    if connection.vendor == "postgresql":
        buckets = ", ".join(f"COUNT(*) FILTER (WHERE d <= {float(bound)})" for bound in JOB_BUCKETS)
        table = connection.ops.quote_name(Job._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT kind, COUNT(*), SUM(d), {buckets} FROM (SELECT kind, "  # noqa: S608 (constants only)
                f"EXTRACT(EPOCH FROM finished_at - started_at)::float8 AS d FROM {table} "
                "WHERE finished_at IS NOT NULL AND started_at IS NOT NULL) AS finished GROUP BY kind ORDER BY kind"
            )
            return [tuple(row) for row in cursor.fetchall()]
    per_kind: dict[str, list[float]] = {}
    for kind, started, ended in finished.values_list("kind", "started_at", "finished_at").iterator():
        row = per_kind.setdefault(kind, [0, 0.0, *(0 for _ in JOB_BUCKETS)])
        seconds = (ended - started).total_seconds() if ended and started else 0.0
        row[0] += 1
        row[1] += seconds
        for index, bound in enumerate(JOB_BUCKETS):
            row[2 + index] += seconds <= bound
    return [(kind, *row) for kind, row in sorted(per_kind.items())]


class PanelCollector(Collector):
    """Builds every series at scrape time from the database (a fixed number of queries) and Redis."""

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._servers()
        yield from self._environments()
        yield from self._process()

    def _jobs(self) -> Iterator[Metric]:
        from panel.jobs.models import Job

        jobs = GaugeMetricFamily("panel_jobs", "Jobs in the database by kind and state.", labels=["kind", "state"])
        for row in Job.objects.values("kind", "status").annotate(n=Count("pk")).order_by("kind", "status"):
            jobs.add_metric([row["kind"], row["status"]], row["n"])
        yield jobs
        durations = HistogramMetricFamily(
            "panel_job_duration_seconds", "Run time of finished jobs (started to finished).", labels=["kind"]
        )
        for kind, count, total, *cumulative in _job_durations():
            points = [(str(float(bound)), int(n)) for bound, n in zip(JOB_BUCKETS, cumulative, strict=True)]
            durations.add_metric([kind], [*points, ("+Inf", int(count))], sum_value=float(total or 0.0))
        yield durations

    def _servers(self) -> Iterator[Metric]:
        cycle = GaugeMetricFamily(
            "panel_poll_cycle_seconds", "Wall time of the newest poll cycle of each server.", labels=["server"]
        )
        reachable = GaugeMetricFamily(
            "panel_server_reachable", "1 if the newest poll reached the server, 0 if not.", labels=["server"]
        )
        for row in ServerHealth.objects.values("server_id", "cycle_seconds", "reachable").order_by("server_id"):
            if row["cycle_seconds"] is not None:
                cycle.add_metric([str(row["server_id"])], row["cycle_seconds"])
            if row["reachable"] is not None:
                reachable.add_metric([str(row["server_id"])], 1.0 if row["reachable"] else 0.0)
        yield cycle
        yield reachable

    def _environments(self) -> Iterator[Metric]:
        from panel.inventory.models import Environment

        info = GaugeMetricFamily(
            "panel_environment_info",
            "Names of each environment (join on the environment id).",
            labels=["environment", "organization", "project", "name", "kind"],
        )
        environments = list(
            Environment.objects.values_list("pk", "project__organization__slug", "project__slug", "name", "kind")
        )
        for env_id, organization, project, name, kind in environments:
            info.add_metric([str(env_id), organization, project, name, kind], 1.0)
        yield info

        state = GaugeMetricFamily(
            "panel_environment_state", "1 for the environment's current state.", labels=["environment", "state"]
        )
        response = GaugeMetricFamily(
            "panel_environment_response_seconds",
            "Response time of the newest poll.",
            labels=["environment", "endpoint"],
        )
        for row in EnvironmentHealth.objects.values("environment_id", "state", "polled_at", "http_ms", "websocket_ms"):
            env = str(row["environment_id"])
            current = HealthState.UNKNOWN if is_stale(row["polled_at"]) else row["state"]
            for known in HealthState.values:
                state.add_metric([env, known], 1.0 if current == known else 0.0)
            for endpoint, ms in (("http", row["http_ms"]), ("websocket", row["websocket_ms"])):
                if ms is not None:
                    response.add_metric([env, endpoint], ms / 1000)
        yield state
        yield response

        uptime = GaugeMetricFamily(
            "panel_environment_uptime_ratio",
            "Uptime over the window (unknown and maintenance left out).",
            labels=["environment", "window"],
        )
        for env_id, windows in history.uptime([row[0] for row in environments], UPTIME_WINDOWS).items():
            for window, value in windows.items():
                if value is not None:
                    uptime.add_metric([str(env_id), window], value)
        yield uptime

        failing = GaugeMetricFamily(
            "panel_check_failing", "1 if the named check fails, 0 if not.", labels=["environment", "check"]
        )
        values = GaugeMetricFamily(
            "panel_check_value", "The named check's measured value.", labels=["environment", "check"]
        )
        rows = CheckState.objects.filter(name__in=checks.ALL).values_list("environment_id", "name", "status", "value")
        for env_id, name, status, value in rows:
            if status != CheckStatus.UNKNOWN:
                failing.add_metric([str(env_id), name], 1.0 if status == CheckStatus.FAILING else 0.0)
            if value is not None:
                values.add_metric([str(env_id), name], value)
        yield failing
        yield values

        incidents = GaugeMetricFamily("panel_incidents_open", "Open incidents.", labels=["environment"])
        for env_id, count in (
            Incident.objects.filter(closed_at__isnull=True)
            .values("environment_id")
            .annotate(n=Count("pk"))
            .values_list("environment_id", "n")
        ):
            incidents.add_metric([str(env_id)], count)
        yield incidents

    def _process(self) -> Iterator[Metric]:
        totals = process_totals()
        yield GaugeMetricFamily(
            "panel_metrics_redis_up", "1 if the processes' counters could be read.", value=0.0 if totals is None else 1
        )
        if totals is None:
            return
        yield GaugeMetricFamily(
            "panel_ssh_connections_open", "SSH connections open over all processes.", value=totals["ssh_open"]
        )
        yield GaugeMetricFamily(
            "panel_ssh_reporting_processes", "Processes that reported their SSH pool.", value=totals["ssh_processes"]
        )
        yield CounterMetricFamily(
            "panel_channel_layer_sends",
            "Live pushes the channel layer accepted.",
            value=totals.get("channel_sends", 0),
        )
        yield CounterMetricFamily(
            "panel_channel_layer_drops",
            "Live pushes the channel layer refused (Redis away, group full).",
            value=totals.get("channel_drops", 0),
        )


def exposition() -> bytes:
    """The text exposition of every series (a fresh registry per scrape: nothing is kept between scrapes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PanelCollector())
    return generate_latest(registry)


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics`` for Prometheus; 404 while ``MONITOR_METRICS_TOKEN`` is unset, 401 without the right token."""
    token: str = settings.MONITOR_METRICS_TOKEN
    if not token:
        raise Http404("Not found.")
    if not _authorized(request, token):
        response = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
