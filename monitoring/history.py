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
from django.utils import timezone

WINDOWS = ("24h", "7d", "30d", "365d")

# One lock for the whole rollup: a second worker waits and then recomputes the same rows (upserts), so two
# workers (or a re-run) give the same rollups without racing each other's deletes.
_ROLLUP_LOCK = 0x6D6F6E726F6C6C  # "monroll"

_WINDOW = re.compile(r"^([1-9][0-9]{0,4})([hd])$")


def measured() -> bool:
    """History is aggregated in PostgreSQL's SQL; on SQLite (the embedded default, where polling is off by default)
    there is none: uptime is unmeasured, the bars are empty and the rollup does nothing."""
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
    if not ids or not windows or not measured():
        return result
    bounds = Boundaries.at(now)
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


def daily_bars(
    environment_ids: Iterable[int], days: int = 90, *, now: datetime | None = None
) -> dict[int, list[dict[str, Any]]]:
    """One bar per UTC day, oldest first and ending today, per environment: ``{"day": date, "uptime": float |
    None, "down_minutes": int}``, in one query (daily rollups before ``D``, hourly ones up to the environment's
    edge, samples after).

    ``down_minutes`` counts down samples times the poll interval (``MONITOR_INTERVAL``), rounded; a day
    without measurements has ``uptime`` None.
    """
    if not measured():
        return {env_id: [] for env_id in _ids(environment_ids)}
    ids = _ids(environment_ids)
    bounds = Boundaries.at(now)
    today = bounds.now.astimezone(UTC).date()
    first = today - timedelta(days=max(days, 1) - 1)
    all_days = [first + timedelta(days=offset) for offset in range((today - first).days + 1)]
    if not ids:
        return {}
    first_start = datetime(first.year, first.month, first.day, tzinfo=UTC)
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
    params: dict[str, Any] = {"ids": ids, "raw": bounds.raw, "day": bounds.day, "first": first_start}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    found: dict[tuple[int, date], tuple[int, int, int]] = {
        (row[0], row[1]): (int(row[2] or 0), int(row[3] or 0), int(row[4] or 0)) for row in rows
    }
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


_UPSERT_HOURLY = """
    INSERT INTO monitoring_rollup (environment_id, period, start, up, degraded, down, unknown, maintenance,
                                   http_ms_avg, http_ms_max, cpu_percent_avg, memory_bytes_avg)
    SELECT environment_id, 'hour', date_trunc('hour', at, 'UTC'),
           COUNT(*) FILTER (WHERE state = 'up'), COUNT(*) FILTER (WHERE state = 'degraded'),
           COUNT(*) FILTER (WHERE state = 'down'), COUNT(*) FILTER (WHERE state = 'unknown'),
           COUNT(*) FILTER (WHERE state = 'maintenance'),
           AVG(http_ms), MAX(http_ms), AVG(cpu_percent), AVG(memory_bytes)
      FROM monitoring_sample WHERE at >= %(since)s AND at < %(until)s
     GROUP BY 1, 3 ORDER BY 1, 3
    ON CONFLICT (environment_id, period, start) DO UPDATE SET
        up = EXCLUDED.up, degraded = EXCLUDED.degraded, down = EXCLUDED.down, unknown = EXCLUDED.unknown,
        maintenance = EXCLUDED.maintenance, http_ms_avg = EXCLUDED.http_ms_avg, http_ms_max = EXCLUDED.http_ms_max,
        cpu_percent_avg = EXCLUDED.cpu_percent_avg, memory_bytes_avg = EXCLUDED.memory_bytes_avg
"""

# Daily from hourly: averages weighted by each hour's sample count (an hour's average covers that many polls).
_UPSERT_DAILY = """
    INSERT INTO monitoring_rollup (environment_id, period, start, up, degraded, down, unknown, maintenance,
                                   http_ms_avg, http_ms_max, cpu_percent_avg, memory_bytes_avg)
    SELECT environment_id, 'day', date_trunc('day', start, 'UTC'),
           SUM(up), SUM(degraded), SUM(down), SUM(unknown), SUM(maintenance),
           SUM(http_ms_avg * n) / NULLIF(SUM(n) FILTER (WHERE http_ms_avg IS NOT NULL), 0), MAX(http_ms_max),
           SUM(cpu_percent_avg * n) / NULLIF(SUM(n) FILTER (WHERE cpu_percent_avg IS NOT NULL), 0),
           SUM(memory_bytes_avg * n) / NULLIF(SUM(n) FILTER (WHERE memory_bytes_avg IS NOT NULL), 0)
      FROM (SELECT *, up + degraded + down + unknown + maintenance AS n FROM monitoring_rollup
             WHERE period = 'hour' AND start >= %(since)s) AS hours
     GROUP BY 1, 3 ORDER BY 1, 3
    ON CONFLICT (environment_id, period, start) DO UPDATE SET
        up = EXCLUDED.up, degraded = EXCLUDED.degraded, down = EXCLUDED.down, unknown = EXCLUDED.unknown,
        maintenance = EXCLUDED.maintenance, http_ms_avg = EXCLUDED.http_ms_avg, http_ms_max = EXCLUDED.http_ms_max,
        cpu_percent_avg = EXCLUDED.cpu_percent_avg, memory_bytes_avg = EXCLUDED.memory_bytes_avg
"""

_UPSERT_SERVER_HOURLY = """
    INSERT INTO monitoring_serverrollup (server_id, period, start, reachable, unreachable, load1_avg,
                                         memory_used_bytes_avg, disk_used_bytes_max)
    SELECT server_id, 'hour', date_trunc('hour', at, 'UTC'),
           COUNT(*) FILTER (WHERE reachable), COUNT(*) FILTER (WHERE NOT reachable),
           AVG(load1), AVG(memory_used_bytes), MAX(disk_used_bytes)
      FROM monitoring_serversample WHERE at >= %(since)s AND at < %(until)s
     GROUP BY 1, 3 ORDER BY 1, 3
    ON CONFLICT (server_id, period, start) DO UPDATE SET
        reachable = EXCLUDED.reachable, unreachable = EXCLUDED.unreachable, load1_avg = EXCLUDED.load1_avg,
        memory_used_bytes_avg = EXCLUDED.memory_used_bytes_avg, disk_used_bytes_max = EXCLUDED.disk_used_bytes_max
"""

_UPSERT_SERVER_DAILY = """
    INSERT INTO monitoring_serverrollup (server_id, period, start, reachable, unreachable, load1_avg,
                                         memory_used_bytes_avg, disk_used_bytes_max)
    SELECT server_id, 'day', date_trunc('day', start, 'UTC'), SUM(reachable), SUM(unreachable),
           SUM(load1_avg * n) / NULLIF(SUM(n) FILTER (WHERE load1_avg IS NOT NULL), 0),
           SUM(memory_used_bytes_avg * n) / NULLIF(SUM(n) FILTER (WHERE memory_used_bytes_avg IS NOT NULL), 0),
           MAX(disk_used_bytes_max)
      FROM (SELECT *, reachable + unreachable AS n FROM monitoring_serverrollup
             WHERE period = 'hour' AND start >= %(since)s) AS hours
     GROUP BY 1, 3 ORDER BY 1, 3
    ON CONFLICT (server_id, period, start) DO UPDATE SET
        reachable = EXCLUDED.reachable, unreachable = EXCLUDED.unreachable, load1_avg = EXCLUDED.load1_avg,
        memory_used_bytes_avg = EXCLUDED.memory_used_bytes_avg, disk_used_bytes_max = EXCLUDED.disk_used_bytes_max
"""


def _since(cursor: Any, table: str, floor: datetime) -> datetime:
    """Where to (re)build from: an hour before the newest hourly rollup (samples of a poll that ended after the
    hour turned), or everything there is on the first run; never before ``floor``."""
    cursor.execute(f"SELECT MAX(start) FROM {table} WHERE period = 'hour'")  # noqa: S608 (constant table names)
    newest = cursor.fetchone()[0]
    if newest is None:
        return floor
    return max(floor, newest - timedelta(hours=1))


def rollup(*, now: datetime | None = None) -> dict[str, int]:
    """Build hourly rollups (from samples) and daily ones (from hourly rollups) for environments and servers, then
    prune every layer past its retention. Idempotent: rows are upserted on their unique constraint, each hour and
    day is recomputed whole from what its source still holds, and a transaction-level advisory lock makes a second
    worker wait and then compute the same rows.

    Raw samples go by whole hours (older than the hour of ``now - MONITOR_RAW_RETENTION_HOURS``), hourly rollups
    by whole days, so an hour or day that is rebuilt always still has all of its source rows. Returns the numbers
    of rows written and deleted (for the task's log).
    """
    if not measured():
        return {}
    now = now or timezone.now()
    raw_cutoff = _trunc_hour(now - timedelta(hours=settings.MONITOR_RAW_RETENTION_HOURS))
    hourly_cutoff = _trunc_day(now - timedelta(days=settings.MONITOR_HOURLY_RETENTION_DAYS))
    daily_cutoff = _trunc_day(now - timedelta(days=settings.MONITOR_DAILY_RETENTION_DAYS))
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    counts: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
        for label, table, hourly, daily in (
            ("environment", "monitoring_rollup", _UPSERT_HOURLY, _UPSERT_DAILY),
            ("server", "monitoring_serverrollup", _UPSERT_SERVER_HOURLY, _UPSERT_SERVER_DAILY),
        ):
            since = _since(cursor, table, epoch)
            # Whole hours only: an hourly rollup exists once its hour has ended (readers take samples after it).
            cursor.execute(hourly, {"since": since, "until": _trunc_hour(now)})
            counts[f"{label}_hourly"] = cursor.rowcount
            # Only whole days whose hours are all still kept are rebuilt.
            cursor.execute(daily, {"since": max(_trunc_day(since), hourly_cutoff)})
            counts[f"{label}_daily"] = cursor.rowcount
        for label, sql, cutoff in (
            ("samples", "DELETE FROM monitoring_sample WHERE at < %s", raw_cutoff),
            ("server_samples", "DELETE FROM monitoring_serversample WHERE at < %s", raw_cutoff),
            ("hourly", "DELETE FROM monitoring_rollup WHERE period = 'hour' AND start < %s", hourly_cutoff),
            ("daily", "DELETE FROM monitoring_rollup WHERE period = 'day' AND start < %s", daily_cutoff),
            (
                "server_hourly",
                "DELETE FROM monitoring_serverrollup WHERE period = 'hour' AND start < %s",
                hourly_cutoff,
            ),
            ("server_daily", "DELETE FROM monitoring_serverrollup WHERE period = 'day' AND start < %s", daily_cutoff),
        ):
            cursor.execute(sql, [cutoff])
            counts[f"pruned_{label}"] = cursor.rowcount
    return counts
