"""Uptime and history from samples and rollups.

Three layers, each kept ``MONITOR_*_RETENTION_*``: raw ``Sample`` rows (24 h), hourly ``Rollup`` rows (30 d) and
daily ones (400 d); the same for servers (``ServerSample``, ``ServerRollup``). ``rollup()`` (the periodic task
``monitoring.tasks.rollup``) builds hourly rollups from samples and daily ones from hourly ones, then prunes.

Readers never mix layers for the same instant. Hourly rollups are built for whole hours once they ended; an
environment's *edge* is the end of its newest hourly rollup (or ``B`` without one), with ``B`` the start of the
oldest hour that raw samples still cover completely (``trunc_hour(now - raw retention)``) and ``D`` the start of
``B``'s day:

- samples answer after the edge (and for the first partial hour of a window shorter than the raw retention);
- hourly rollups up to the edge, from ``D`` (or from the window's first hour when it is within the hourly
  retention);
- daily rollups for everything before ``D``.

So an uptime or a bar costs about 24 hourly rows, the daily rows and the newest minutes of samples per environment,
not a day of samples.

Uptime is ``up / (up + degraded + down)``: unknown (the panel could not look) and maintenance are left out of both
sides, so an unreachable server never costs its customers uptime. Days are UTC days.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Avg, Count, ExpressionWrapper, F, FloatField, Max, Q, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from .models import Rollup, RollupPeriod, Sample, ServerRollup, ServerSample

WINDOWS = ("24h", "7d", "30d", "365d")

# One lock for the whole rollup: a second worker waits and then recomputes the same rows (upserts), so two
# workers (or a re-run) give the same rollups without racing each other's deletes.
_ROLLUP_LOCK = 0x6D6F6E726F6C6C  # "monroll"

_WINDOW = re.compile(r"^([1-9][0-9]{0,4})([hd])$")


def _postgresql() -> bool:
    """Uptime and bars are one SQL query on PostgreSQL; other databases (SQLite, the embedded default) get the same
    figures from a few plain ORM queries summed in Python (``_uptime_portable``, ``_daily_bars_portable``)."""
    return connection.vendor == "postgresql"


def window_delta(window: str) -> timedelta:
    """``"24h"`` / ``"7d"`` as a ``timedelta`` (``ValueError`` for anything else)."""
    match = _WINDOW.match(window)
    if not match:
        raise ValueError(f"Unknown uptime window {window!r} (use e.g. 24h, 7d).")
    amount = int(match.group(1))
    return timedelta(hours=amount) if match.group(2) == "h" else timedelta(days=amount)


def _trunc_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _trunc_day(at: datetime) -> datetime:
    return _trunc_hour(at).replace(hour=0)


@dataclass(frozen=True)
class Boundaries:
    """Where each layer answers (see the module docstring)."""

    now: datetime
    raw: datetime  # B: samples from here on
    day: datetime  # D: hourly rollups from here to B, daily rollups before

    @classmethod
    def at(cls, now: datetime | None = None) -> Boundaries:
        """The boundaries at ``now`` (default: the current time)."""
        now = now or timezone.now()
        raw = _trunc_hour(now - timedelta(hours=settings.MONITOR_RAW_RETENTION_HOURS))
        return cls(now=now, raw=raw, day=_trunc_day(raw))


def _ids(environment_ids: Iterable[int]) -> list[int]:
    return sorted({int(env_id) for env_id in environment_ids})


# Counts per source row: samples count one each, rollups carry their counts.
_ROLLUP_COUNTS = "up, degraded, down"


# Per environment, where its hourly rollups end (the newest one's start + 1 hour; hourly rollups exist only for
# hours that had ended when they were built) and so where its samples take over; never before B.
_EDGE = """
    edge AS (
        SELECT e.id AS environment_id,
               GREATEST(COALESCE(newest.start + interval '1 hour', %(raw)s), %(raw)s) AS b
          FROM unnest(%(ids)s::bigint[]) AS e(id)
          LEFT JOIN LATERAL (
              SELECT r.start FROM monitoring_rollup r
               WHERE r.environment_id = e.id AND r.period = 'hour' ORDER BY r.start DESC LIMIT 1
          ) AS newest ON true
    )
"""
# Samples after each environment's edge (LATERAL: one index range per environment).
_NEWEST_SAMPLES = """
    SELECT edge.environment_id, 's' AS src, x.at AS ts, x.up, x.degraded, x.down
      FROM edge CROSS JOIN LATERAL (
          SELECT s.at, (s.state = 'up')::int AS up, (s.state = 'degraded')::int AS degraded,
                 (s.state = 'down')::int AS down
            FROM monitoring_sample s WHERE s.environment_id = edge.environment_id AND s.at >= edge.b
          OFFSET 0  -- keeps it a per-environment index range (not pulled up into a join over every sample)
      ) AS x
"""


def _ceil_hour(at: datetime) -> datetime:
    floor = _trunc_hour(at)
    return floor if floor == at else floor + timedelta(hours=1)


def _ceil_day(at: datetime) -> datetime:
    floor = _trunc_day(at)
    return floor if floor == at else floor + timedelta(days=1)


def uptime(
    environment_ids: Iterable[int], windows: Sequence[str] = WINDOWS, *, now: datetime | None = None
) -> dict[int, dict[str, float | None]]:
    """Uptime (0..1, None when nothing was measured) per environment and window, in one query.

    Each environment's samples count after its edge. Before it, a window within the raw retention reads its first
    partial hour from samples and whole hours from hourly rollups; a longer one reads hourly rollups for its first
    partial day and from ``D`` on, and daily rollups for the whole days between (a window longer than the hourly
    retention starts at its first day's midnight). A query reads about 50 hourly rows, a daily row per day and the
    samples of the newest minutes per environment, whatever the window and the poll interval.
    """
    ids = _ids(environment_ids)
    result: dict[int, dict[str, float | None]] = {env_id: dict.fromkeys(windows) for env_id in ids}
    if not ids or not windows:
        return result
    bounds = Boundaries.at(now)
    if not _postgresql():
        return _uptime_portable(ids, windows, bounds, result)
    hourly_floor = _trunc_day(bounds.now - timedelta(days=settings.MONITOR_HOURLY_RETENTION_DAYS))
    params: dict[str, Any] = {"ids": ids, "raw": bounds.raw, "day": bounds.day}
    columns: list[str] = []
    heads: list[str] = []
    hourly_ranges = ["r.start >= %(day)s"]
    daily_from = bounds.day
    for index, window in enumerate(windows):
        start = bounds.now - window_delta(window)
        key = f"w{index}"
        if start >= bounds.raw:
            params[key], params[f"{key}_ceil"] = start, _ceil_hour(start)
            heads.append(
                f"""SELECT edge.environment_id, 'head{index}', x.at, x.up, x.degraded, x.down
                      FROM edge CROSS JOIN LATERAL (
                          SELECT s.at, (s.state = 'up')::int AS up, (s.state = 'degraded')::int AS degraded,
                                 (s.state = 'down')::int AS down
                            FROM monitoring_sample s
                           WHERE s.environment_id = edge.environment_id AND s.at >= %({key})s
                             AND s.at < LEAST(%({key}_ceil)s, edge.b)
                          OFFSET 0
                      ) AS x"""  # noqa: S608
            )
            condition = (
                f"((src = 's' AND ts >= %({key})s) OR src = 'head{index}' OR (src = 'h' AND ts >= %({key}_ceil)s))"
            )
        else:
            first_hour = _trunc_hour(start) if _trunc_hour(start) >= hourly_floor else _trunc_day(start)
            params[f"{key}_h"] = first_hour
            params[f"{key}_d"] = min(_ceil_day(first_hour), bounds.day)
            daily_from = min(daily_from, params[f"{key}_d"])
            hourly_ranges.append(f"(r.start >= %({key}_h)s AND r.start < %({key}_d)s)")
            condition = (
                f"(src = 's' OR (src = 'h' AND ts >= %({key}_h)s AND (ts < %({key}_d)s OR ts >= %(day)s))"
                f" OR (src = 'd' AND ts >= %({key}_d)s))"
            )
        for column in ("up", "degraded", "down"):
            columns.append(f"SUM(CASE WHEN {condition} THEN {column} ELSE 0 END)")
    params["daily_from"] = daily_from
    head_sql = "".join(f" UNION ALL {head}" for head in heads)
    # Only constant fragments and placeholders are formatted in.
    sql = f"""
        WITH {_EDGE}, src AS (
            {_NEWEST_SAMPLES}
            UNION ALL
            SELECT edge.environment_id, 'h', x.start, x.up, x.degraded, x.down
              FROM edge CROSS JOIN LATERAL (
                  SELECT r.start, r.up, r.degraded, r.down FROM monitoring_rollup r
                   WHERE r.environment_id = edge.environment_id AND r.period = 'hour' AND r.start < edge.b
                     AND ({" OR ".join(hourly_ranges)})
                  OFFSET 0
              ) AS x
            UNION ALL
            SELECT environment_id, 'd', start, {_ROLLUP_COUNTS}
              FROM monitoring_rollup WHERE environment_id = ANY(%(ids)s) AND period = 'day'
               AND start >= %(daily_from)s AND start < %(day)s
            {head_sql}
        )
        SELECT environment_id, {", ".join(columns)} FROM src GROUP BY environment_id
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    for row in rows:
        env_id, counts = row[0], row[1:]
        for index, window in enumerate(windows):
            up, degraded, down = (int(value or 0) for value in counts[index * 3 : index * 3 + 3])
            total = up + degraded + down
            result[env_id][window] = up / total if total else None
    return result


# The same figures without PostgreSQL's SQL (SQLite, the embedded default): the rows each layer contributes, read
# with plain ORM queries (a handful per call, whatever the number of environments), then summed in Python under the
# same conditions as the SQL above. tests/test_monitor_history.py checks that both give the same numbers.
Counts = tuple[int, int, int]  # up, degraded, down


def _state_counts(state: str) -> Counts:
    return int(state == "up"), int(state == "degraded"), int(state == "down")


def _edges(ids: list[int], bounds: Boundaries) -> dict[int, datetime]:
    """Per environment, where its hourly rollups end and its samples take over (``_EDGE``)."""
    newest = dict(
        Rollup.objects.filter(environment_id__in=ids, period=RollupPeriod.HOUR)
        .values("environment_id")
        .annotate(newest=Max("start"))
        .order_by()
        .values_list("environment_id", "newest")
    )
    return {
        env_id: max(newest[env_id] + timedelta(hours=1), bounds.raw) if env_id in newest else bounds.raw
        for env_id in ids
    }


def _rollup_rows(ids: list[int], period: str, **lookups: Any) -> list[tuple[int, datetime, Counts]]:
    rows = Rollup.objects.filter(environment_id__in=ids, period=period, **lookups).values_list(
        "environment_id", "start", "up", "degraded", "down"
    )
    return [(env_id, start, (up, degraded, down)) for env_id, start, up, degraded, down in rows]


def _uptime_portable(
    ids: list[int], windows: Sequence[str], bounds: Boundaries, result: dict[int, dict[str, float | None]]
) -> dict[int, dict[str, float | None]]:
    hourly_floor = _trunc_day(bounds.now - timedelta(days=settings.MONITOR_HOURLY_RETENTION_DAYS))
    edges = _edges(ids, bounds)
    # Per window (short, lower, upper): within the raw retention (True, its start, its first whole hour), else
    # (False, its first hour, its first whole day).
    plans: list[tuple[bool, datetime, datetime]] = []
    sample_from, hourly_from, daily_from = min(edges.values()), bounds.day, bounds.day
    for window in windows:
        start = bounds.now - window_delta(window)
        if start >= bounds.raw:
            plans.append((True, start, _ceil_hour(start)))
            sample_from = min(sample_from, start)
        else:
            first_hour = _trunc_hour(start) if _trunc_hour(start) >= hourly_floor else _trunc_day(start)
            first_day = min(_ceil_day(first_hour), bounds.day)
            plans.append((False, first_hour, first_day))
            hourly_from, daily_from = min(hourly_from, first_hour), min(daily_from, first_day)
    totals = {env_id: [[0, 0, 0] for _ in windows] for env_id in ids}

    def add(env_id: int, index: int, counts: Counts) -> None:
        total = totals[env_id][index]
        for position, value in enumerate(counts):
            total[position] += value

    samples = Sample.objects.filter(environment_id__in=ids, at__gte=sample_from).values_list(
        "environment_id", "at", "state"
    )
    for env_id, at, state in samples:
        edge, counts = edges[env_id], _state_counts(state)
        for index, (short, lower, upper) in enumerate(plans):
            if (at >= edge and (not short or at >= lower)) or (short and lower <= at < min(upper, edge)):
                add(env_id, index, counts)
    for env_id, at, counts in _rollup_rows(ids, RollupPeriod.HOUR, start__gte=hourly_from):
        if at >= edges[env_id]:
            continue
        for index, (short, lower, upper) in enumerate(plans):
            if (short and at >= upper) or (not short and at >= lower and (at < upper or at >= bounds.day)):
                add(env_id, index, counts)
    for env_id, at, counts in _rollup_rows(ids, RollupPeriod.DAY, start__gte=daily_from, start__lt=bounds.day):
        for index, (short, _lower, upper) in enumerate(plans):
            if not short and at >= upper:
                add(env_id, index, counts)
    for env_id, per_window in totals.items():
        for index, window in enumerate(windows):
            up, degraded, down = per_window[index]
            total = up + degraded + down
            result[env_id][window] = up / total if total else None
    return result


def _daily_counts_portable(ids: list[int], bounds: Boundaries, first: datetime) -> dict[tuple[int, date], Counts]:
    edges = _edges(ids, bounds)
    found: dict[tuple[int, date], list[int]] = {}

    def add(env_id: int, at: datetime, counts: Counts) -> None:
        if at < first:
            return
        total = found.setdefault((env_id, at.astimezone(UTC).date()), [0, 0, 0])
        for position, value in enumerate(counts):
            total[position] += value

    samples = Sample.objects.filter(environment_id__in=ids, at__gte=max(min(edges.values()), first)).values_list(
        "environment_id", "at", "state"
    )
    for env_id, at, state in samples:
        if at >= edges[env_id]:
            add(env_id, at, _state_counts(state))
    for env_id, at, counts in _rollup_rows(ids, RollupPeriod.HOUR, start__gte=max(bounds.day, first)):
        if at < edges[env_id]:
            add(env_id, at, counts)
    for env_id, at, counts in _rollup_rows(ids, RollupPeriod.DAY, start__gte=first, start__lt=bounds.day):
        add(env_id, at, counts)
    return {key: (up, degraded, down) for key, (up, degraded, down) in found.items()}


def daily_bars(
    environment_ids: Iterable[int], days: int = 90, *, now: datetime | None = None
) -> dict[int, list[dict[str, Any]]]:
    """One bar per UTC day, oldest first and ending today, per environment: ``{"day": date, "uptime": float |
    None, "down_minutes": int}``, in one query (daily rollups before ``D``, hourly ones up to the environment's
    edge, samples after).

    ``down_minutes`` counts down samples times the poll interval (``MONITOR_INTERVAL``), rounded; a day
    without measurements has ``uptime`` None.
    """
    ids = _ids(environment_ids)
    bounds = Boundaries.at(now)
    today = bounds.now.astimezone(UTC).date()
    first = today - timedelta(days=max(days, 1) - 1)
    all_days = [first + timedelta(days=offset) for offset in range((today - first).days + 1)]
    if not ids:
        return {}
    first_start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    counts = _daily_counts if _postgresql() else _daily_counts_portable
    return _bars(ids, all_days, counts(ids, bounds, first_start))


def _daily_counts(ids: list[int], bounds: Boundaries, first: datetime) -> dict[tuple[int, date], Counts]:
    """(up, degraded, down) per environment and UTC day from ``first`` on, in one query."""
    # Only constant fragments and placeholders are formatted in.
    sql = f"""
        WITH {_EDGE}, src AS (
            {_NEWEST_SAMPLES}
            UNION ALL
            SELECT edge.environment_id, 'h', x.start, x.up, x.degraded, x.down
              FROM edge CROSS JOIN LATERAL (
                  SELECT r.start, r.up, r.degraded, r.down FROM monitoring_rollup r
                   WHERE r.environment_id = edge.environment_id AND r.period = 'hour'
                     AND r.start >= GREATEST(%(day)s, %(first)s) AND r.start < edge.b
                  OFFSET 0
              ) AS x
            UNION ALL
            SELECT environment_id, 'd', start, {_ROLLUP_COUNTS}
              FROM monitoring_rollup WHERE environment_id = ANY(%(ids)s) AND period = 'day'
               AND start >= %(first)s AND start < %(day)s
        )
        SELECT environment_id, (date_trunc('day', ts, 'UTC') AT TIME ZONE 'UTC')::date AS day,
               SUM(up), SUM(degraded), SUM(down)
          FROM src WHERE ts >= %(first)s GROUP BY 1, 2
    """  # noqa: S608
    params: dict[str, Any] = {"ids": ids, "raw": bounds.raw, "day": bounds.day, "first": first}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return {(row[0], row[1]): (int(row[2] or 0), int(row[3] or 0), int(row[4] or 0)) for row in rows}


def _bars(
    ids: list[int], all_days: list[date], found: dict[tuple[int, date], Counts]
) -> dict[int, list[dict[str, Any]]]:
    interval_minutes = float(getattr(settings, "MONITOR_INTERVAL", 30) or 30) / 60
    bars: dict[int, list[dict[str, Any]]] = {}
    for env_id in ids:
        bars[env_id] = []
        for day in all_days:
            up, degraded, down = found.get((env_id, day), (0, 0, 0))
            total = up + degraded + down
            bars[env_id].append(
                {
                    "day": day,
                    "uptime": up / total if total else None,
                    "down_minutes": round(down * interval_minutes),
                }
            )
    return bars


def _since(model: type[Rollup] | type[ServerRollup], floor: datetime) -> datetime:
    """Where to (re)build from: an hour before the newest hourly rollup (samples of a poll that ended after the
    hour turned), or everything there is on the first run; never before ``floor``."""
    newest = model.objects.filter(period=RollupPeriod.HOUR).aggregate(newest=Max("start"))["newest"]
    if newest is None:
        return floor
    return max(floor, newest - timedelta(hours=1))


@dataclass(frozen=True)
class _Layer:
    """What one rollup table sums from its samples: counts (a filter each), averages and maxima (a sample field
    each)."""

    rollup: type[Rollup] | type[ServerRollup]
    sample: type[Sample] | type[ServerSample]
    owner: str
    counts: dict[str, Q]
    averages: dict[str, str]
    maxima: dict[str, str]

    def upsert(self, rows: list[Any]) -> int:
        """Insert or update rollups on their unique constraint (``INSERT ... ON CONFLICT DO UPDATE`` on both
        databases)."""
        if rows:
            self.rollup.objects.bulk_create(
                rows, batch_size=500, update_conflicts=True, unique_fields=[self.owner, "period", "start"],
                update_fields=[*self.counts, *self.averages, *self.maxima],
            )  # fmt: skip
        return len(rows)

    def build(self, since: datetime, until: datetime, daily_since: datetime) -> tuple[int, int]:
        """Hourly rollups of the samples in [since, until), then daily ones of the hourly rollups from
        ``daily_since``; returns how many of each were written."""
        owner_id = f"{self.owner}_id"
        hours = (
            self.sample.objects.filter(at__gte=since, at__lt=until)
            .annotate(hour=TruncHour("at", tzinfo=UTC))
            .values(owner_id, "hour")
            .annotate(
                **{f"{name}__v": Count("pk", filter=which) for name, which in self.counts.items()},
                **{f"{name}__v": Avg(field) for name, field in self.averages.items()},
                **{f"{name}__v": Max(field) for name, field in self.maxima.items()},
            )
            .order_by()
        )
        fields = [*self.counts, *self.averages, *self.maxima]
        hourly = self.upsert([
            self.rollup(**{owner_id: row[owner_id]}, period=RollupPeriod.HOUR, start=row["hour"],
                        **{name: row[f"{name}__v"] for name in fields})
            for row in hours
        ])  # fmt: skip
        # Daily averages from hourly ones weigh each hour by its sample count n (an hour's average covers that many
        # polls): the weighted sum over the weight of the hours that have the average.
        weight = sum((F(name) for name in list(self.counts)[1:]), F(next(iter(self.counts))))
        aggregates: dict[str, Any] = {f"{name}__v": Sum(name) for name in self.counts}
        aggregates |= {f"{name}__v": Max(name) for name in self.maxima}
        for name in self.averages:
            aggregates[f"{name}__w"] = Sum(ExpressionWrapper(F(name) * F("n"), output_field=FloatField()))
            aggregates[f"{name}__n"] = Sum("n", filter=Q(**{f"{name}__isnull": False}))
        days = (
            self.rollup.objects.filter(period=RollupPeriod.HOUR, start__gte=daily_since)
            .annotate(day=TruncDay("start", tzinfo=UTC), n=weight)
            .values(owner_id, "day")
            .annotate(**aggregates)
            .order_by()
        )
        daily = self.upsert([
            self.rollup(**{owner_id: row[owner_id]}, period=RollupPeriod.DAY, start=row["day"],
                        **{name: row[f"{name}__v"] for name in (*self.counts, *self.maxima)},
                        **{name: row[f"{name}__w"] / row[f"{name}__n"] if row[f"{name}__n"] else None
                           for name in self.averages})
            for row in days
        ])  # fmt: skip
        return hourly, daily


_LAYERS = {
    "environment": _Layer(
        Rollup, Sample, "environment",
        counts={state: Q(state=state) for state in ("up", "degraded", "down", "unknown", "maintenance")},
        averages={"http_ms_avg": "http_ms", "cpu_percent_avg": "cpu_percent", "memory_bytes_avg": "memory_bytes"},
        maxima={"http_ms_max": "http_ms"},
    ),
    "server": _Layer(
        ServerRollup, ServerSample, "server",
        counts={"reachable": Q(reachable=True), "unreachable": Q(reachable=False)},
        averages={"load1_avg": "load1", "memory_used_bytes_avg": "memory_used_bytes"},
        maxima={"disk_used_bytes_max": "disk_used_bytes"},
    ),
}  # fmt: skip


def rollup(*, now: datetime | None = None) -> dict[str, int]:
    """Build hourly rollups (from samples) and daily ones (from hourly rollups) for environments and servers, then
    prune every layer past its retention. Idempotent: rows are upserted on their unique constraint and each hour and
    day is recomputed whole from what its source still holds. On PostgreSQL a transaction-level advisory lock makes
    a second worker wait and then compute the same rows; on SQLite (one machine) writers are serialized by the
    database itself, and a second run recomputes the same rows.

    Raw samples go by whole hours (older than the hour of ``now - MONITOR_RAW_RETENTION_HOURS``), hourly rollups
    by whole days, so an hour or day that is rebuilt always still has all of its source rows. Returns the numbers
    of rows written and deleted (for the task's log).
    """
    now = now or timezone.now()
    raw_cutoff = _trunc_hour(now - timedelta(hours=settings.MONITOR_RAW_RETENTION_HOURS))
    hourly_cutoff = _trunc_day(now - timedelta(days=settings.MONITOR_HOURLY_RETENTION_DAYS))
    daily_cutoff = _trunc_day(now - timedelta(days=settings.MONITOR_DAILY_RETENTION_DAYS))
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    counts: dict[str, int] = {}
    with transaction.atomic():
        if _postgresql():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
        for label, layer in _LAYERS.items():
            since = _since(layer.rollup, epoch)
            # Whole hours only: an hourly rollup exists once its hour has ended (readers take samples after it).
            # Only whole days whose hours are all still kept are rebuilt.
            counts[f"{label}_hourly"], counts[f"{label}_daily"] = layer.build(
                since, _trunc_hour(now), max(_trunc_day(since), hourly_cutoff)
            )
        for label, queryset in (
            ("samples", Sample.objects.filter(at__lt=raw_cutoff)),
            ("server_samples", ServerSample.objects.filter(at__lt=raw_cutoff)),
            ("hourly", Rollup.objects.filter(period=RollupPeriod.HOUR, start__lt=hourly_cutoff)),
            ("daily", Rollup.objects.filter(period=RollupPeriod.DAY, start__lt=daily_cutoff)),
            ("server_hourly", ServerRollup.objects.filter(period=RollupPeriod.HOUR, start__lt=hourly_cutoff)),
            ("server_daily", ServerRollup.objects.filter(period=RollupPeriod.DAY, start__lt=daily_cutoff)),
        ):
            counts[f"pruned_{label}"] = queryset.delete()[0]
    return counts
