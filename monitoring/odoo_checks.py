"""The Odoo-aware checks: what ``psql`` inside an environment's db container says about its database, and the age of
its newest verified backup.

The poller sends ``odoo_sql()`` with the cycle's script every ``MONITOR_ODOO_CHECK_EVERY`` cycles; the script pipes it
into ``psql`` in every environment's db container at once (as the container's ``POSTGRES_USER``, on the local
socket, in Odoo's ``PGDATABASE``) and prints what comes back under one marker per environment. Each query prints one
line ``<key><TAB><json>`` (jsonb: its text has no newline); a query whose table or column is missing in this Odoo version is skipped by psql's
``\\if`` (nothing is installed on the server, nothing is written to the database).

What each check reads:

- ``cron_overdue``: active ``ir_cron`` rows whose ``nextcall`` passed more than ``MONITOR_CRON_OVERDUE_MINUTES`` ago
  (a stuck cron worker, crons disabled by ``--max-cron-threads=0``, a cron that never finishes);
- ``cron_failures``: ``failure_count`` >= ``MONITOR_CRON_FAILURE_COUNT`` (Odoo 17+ records failures on ``ir_cron``;
  before 17 a failing cron leaves no trace in the database, so the check says it is not measurable);
- ``queue_job``: jobs by channel and state, the age of the oldest pending/enqueued job whose ``eta`` passed (more
  than ``MONITOR_QUEUE_JOB_AGE_MINUTES``: failing) and failed jobs (warning), when the ``queue_job`` table exists;
- ``database_size`` / ``filestore_size``: ``pg_database_size`` and the sum of ``ir_attachment.file_size`` of stored
  files, with their growth per day over a baseline kept in the check's details (reset daily); warning above
  ``MONITOR_DATABASE_SIZE_WARN_MB`` / ``MONITOR_FILESTORE_SIZE_WARN_MB`` or a growth above
  ``MONITOR_DATABASE_GROWTH_WARN_MB_PER_DAY`` / ``MONITOR_FILESTORE_GROWTH_WARN_MB_PER_DAY`` (0: no limit);
- ``long_queries`` / ``idle_in_transaction`` / ``locks``: sessions of the database active for more than
  ``MONITOR_LONG_QUERY_SECONDS``, idle in a transaction for more than ``MONITOR_IDLE_IN_TRANSACTION_SECONDS``, or
  waiting on a lock for more than ``MONITOR_LOCK_WAIT_SECONDS`` (with the pids blocking them); query texts are never
  read (they may carry customers' data);
- ``connections``: client connections of the PostgreSQL server against ``max_connections``
  (``MONITOR_CONNECTIONS_PERCENT``);
- ``workers``: Odoo sessions of distinct processes (``application_name`` ``odoo-<pid>``, Odoo 15+) running a query
  against the environment's ``--workers`` (``MONITOR_WORKERS_BUSY_PERCENT``); not measurable with ``workers`` 0;
- ``backup_age``: the newest verified backup against the environment's backup schedule (``backups.schedule.
  overdue_since``, as the backups page's overdue flag).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from monitoring import checks
from monitoring.checks import CheckResult, unknown
from monitoring.models import CheckStatus

MB = 1024 * 1024
DAY = 86400.0
#: Growth is measured against a baseline at least this old, and the baseline is renewed once it is a day old.
GROWTH_MIN_SECONDS = 3600.0

# A cron's name: ``cron_name`` is a varchar before Odoo 16 and a translated jsonb from 16 on (to_jsonb reads both);
# braces doubled for str.format.
_CRON_NAME = (
    "CASE jsonb_typeof(to_jsonb(cron_name)) WHEN 'object' THEN coalesce(to_jsonb(cron_name)->>'en_US', "
    "(SELECT value FROM jsonb_each_text(to_jsonb(cron_name)) LIMIT 1)) ELSE to_jsonb(cron_name)#>>'{{}}' END"
)
_UTC_NOW = "(now() AT TIME ZONE 'UTC')"

SQL_TEMPLATE = f"""\\set QUIET on
\\set ON_ERROR_STOP off
\\set cron_overdue_minutes {{cron_overdue_minutes}}
\\set cron_failure_count {{cron_failure_count}}
\\set long_query_seconds {{long_query_seconds}}
\\set idle_seconds {{idle_seconds}}
\\set lock_seconds {{lock_seconds}}
\\pset format unaligned
\\pset tuples_only on
\\pset fieldsep '\\t'
SELECT to_regclass('ir_cron') IS NOT NULL AS has_cron,
    EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
        AND table_name = 'ir_cron' AND column_name = 'cron_name') AS has_cron_name,
    EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
        AND table_name = 'ir_cron' AND column_name = 'failure_count') AS has_cron_failures,
    to_regclass('queue_job') IS NOT NULL AS has_queue_job,
    EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
        AND table_name = 'ir_attachment' AND column_name = 'file_size') AS has_attachments \\gset
SELECT 'server', jsonb_build_object(
    'max_connections', current_setting('max_connections')::int,
    'connections', (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
    'database_bytes', pg_database_size(current_database()));
SELECT 'activity', jsonb_build_object(
    'long_queries', (SELECT coalesce(jsonb_agg(a), '[]') FROM (
        SELECT pid, application_name AS application, round(extract(epoch FROM now() - query_start)) AS seconds
        FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
            AND backend_type = 'client backend' AND now() - query_start > make_interval(secs => :long_query_seconds)
        ORDER BY query_start LIMIT 10) a),
    'idle_in_transaction', (SELECT coalesce(jsonb_agg(a), '[]') FROM (
        SELECT pid, application_name AS application, round(extract(epoch FROM now() - state_change)) AS seconds
        FROM pg_stat_activity WHERE datname = current_database()
            AND state IN ('idle in transaction', 'idle in transaction (aborted)')
            AND now() - state_change > make_interval(secs => :idle_seconds)
        ORDER BY state_change LIMIT 10) a),
    'lock_waits', (SELECT coalesce(jsonb_agg(a), '[]') FROM (
        SELECT pid, application_name AS application, round(extract(epoch FROM now() - query_start)) AS seconds,
            pg_blocking_pids(pid) AS blocked_by
        FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
            AND now() - query_start > make_interval(secs => :lock_seconds)
        ORDER BY query_start LIMIT 10) a),
    'busy_workers', (SELECT count(DISTINCT application_name) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE 'odoo-%' AND state = 'active'
            AND pid <> pg_backend_pid()));
\\if :has_cron
\\if :has_cron_name
SELECT 'crons', jsonb_build_object(
    'active', (SELECT count(*) FROM ir_cron WHERE active),
    'overdue_count', (SELECT count(*) FROM ir_cron WHERE active
        AND nextcall < {_UTC_NOW} - make_interval(mins => :cron_overdue_minutes)),
    'overdue', (SELECT coalesce(jsonb_agg(c), '[]') FROM (
        SELECT id, {_CRON_NAME} AS name, round(extract(epoch FROM {_UTC_NOW} - nextcall)) AS late_seconds,
            to_char(nextcall, 'YYYY-MM-DD HH24:MI') AS nextcall
        FROM ir_cron WHERE active AND nextcall < {_UTC_NOW} - make_interval(mins => :cron_overdue_minutes)
        ORDER BY nextcall LIMIT 10) c));
\\endif
\\if :has_cron_failures
SELECT 'cron_failures', (SELECT coalesce(jsonb_agg(c), '[]') FROM (
    SELECT id, {_CRON_NAME} AS name, failure_count,
        to_char(first_failure_date, 'YYYY-MM-DD HH24:MI') AS first_failure
    FROM ir_cron WHERE failure_count >= :cron_failure_count ORDER BY failure_count DESC, id LIMIT 10) c);
\\endif
\\endif
\\if :has_queue_job
SELECT 'queue_job', jsonb_build_object(
    'counts', (SELECT coalesce(jsonb_agg(q), '[]') FROM (
        SELECT coalesce(channel, 'root') AS channel, state, count(*) AS jobs FROM queue_job
        WHERE state NOT IN ('done', 'cancelled') GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 100) q),
    'oldest_pending_seconds', (SELECT round(extract(epoch FROM {_UTC_NOW} - min(coalesce(eta, date_created))))
        FROM queue_job WHERE state IN ('pending', 'enqueued') AND (eta IS NULL OR eta < {_UTC_NOW})),
    'oldest_pending_channel', (SELECT coalesce(channel, 'root') FROM queue_job
        WHERE state IN ('pending', 'enqueued') AND (eta IS NULL OR eta < {_UTC_NOW})
        ORDER BY coalesce(eta, date_created) LIMIT 1));
\\endif
\\if :has_attachments
SELECT 'filestore', jsonb_build_object('bytes', (SELECT coalesce(sum(file_size), 0) FROM ir_attachment
    WHERE store_fname IS NOT NULL));
\\endif
"""  # noqa: S608 - fixed text; the only values are integers of the settings, put in by odoo_sql()


def odoo_sql() -> str:
    """The SQL script of the Odoo checks, with the thresholds of the settings (integers only)."""
    values = {
        "cron_overdue_minutes": int(settings.MONITOR_CRON_OVERDUE_MINUTES),
        "cron_failure_count": int(settings.MONITOR_CRON_FAILURE_COUNT),
        "long_query_seconds": int(settings.MONITOR_LONG_QUERY_SECONDS),
        "idle_seconds": int(settings.MONITOR_IDLE_IN_TRANSACTION_SECONDS),
        "lock_seconds": int(settings.MONITOR_LOCK_WAIT_SECONDS),
    }
    return SQL_TEMPLATE.format(**values)


@dataclass
class OdooFacts:
    """What the SQL script printed for one environment (``sections`` by key), its errors and exit code."""

    sections: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    exit_code: int | None = None


def parse_odoo_output(text: str) -> OdooFacts:
    """The ``<key><TAB><json>`` lines of one environment's psql run; other lines are errors (psql's or docker's).
    The runner's ``@@rc <code>`` line gives the exit code."""
    facts = OdooFacts()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("@@rc "):
            code = line[5:].strip()
            facts.exit_code = int(code) if code.isdigit() else None
            continue
        key, tab, payload = line.partition("\t")
        if tab and key in ("server", "activity", "crons", "cron_failures", "queue_job", "filestore"):
            try:
                facts.sections[key] = json.loads(payload)
            except ValueError:
                facts.errors.append(line[:300])
            continue
        facts.errors.append(line[:300])
    return facts


@dataclass(frozen=True)
class OdooEnvironment:
    """What the Odoo checks need to know about an environment besides its database."""

    label: str
    odoo_major: int
    workers: int


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"1 {word}"
    return f"{count} {word[:-1]}ies" if word.endswith("y") else f"{count} {word}s"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def _size(value: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", MB), ("KiB", 1024)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"


def _sessions(rows: list[dict[str, Any]], *, blocked: bool = False) -> str:
    parts = []
    for row in rows[:3]:
        text = f"pid {row.get('pid')} ({row.get('application') or 'no application name'}, {_duration(row.get('seconds') or 0)}"
        if blocked and row.get("blocked_by"):
            text += ", blocked by pid " + ", ".join(str(pid) for pid in row["blocked_by"][:3])
        parts.append(text + ")")
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return "; ".join(parts) + more


def evaluate(
    environment: OdooEnvironment, facts: OdooFacts, previous: dict[str, dict[str, Any]], now: datetime
) -> list[CheckResult]:
    """The results of every psql-based Odoo check of one environment (``backup_age`` aside).

    ``previous`` holds each check's stored details (the growth baselines). When psql could not run, every check is
    unknown with the reason."""
    names = [name for name in checks.ODOO if name != checks.BACKUP_AGE]
    if "server" not in facts.sections:
        reason = "; ".join(facts.errors[-2:]) or "no answer"
        message = f"The database could not be queried ({reason[:300]})."
        return [unknown(name, message) for name in names]
    server = facts.sections["server"]
    activity = facts.sections.get("activity") or {}
    results = [
        _cron_overdue(facts.sections.get("crons")),
        _cron_failures(environment, facts.sections.get("cron_failures"), has_crons="crons" in facts.sections),
        _queue_job(facts.sections.get("queue_job")),
        _growth(
            checks.DATABASE_SIZE,
            "The database",
            server.get("database_bytes"),
            previous.get(checks.DATABASE_SIZE),
            now,
            settings.MONITOR_DATABASE_SIZE_WARN_MB,
            settings.MONITOR_DATABASE_GROWTH_WARN_MB_PER_DAY,
        ),
        _growth(
            checks.FILESTORE_SIZE,
            "The filestore",
            (facts.sections.get("filestore") or {}).get("bytes"),
            previous.get(checks.FILESTORE_SIZE),
            now,
            settings.MONITOR_FILESTORE_SIZE_WARN_MB,
            settings.MONITOR_FILESTORE_GROWTH_WARN_MB_PER_DAY,
        ),
        _sessions_check(
            checks.LONG_QUERIES,
            activity.get("long_queries"),
            settings.MONITOR_LONG_QUERY_SECONDS,
            "{n} running longer than {limit}: {sessions}. Look at what they run (pg_stat_activity) and cancel them "
            "with pg_cancel_backend(pid) if they are stuck.",
            "No query runs longer than {limit}.",
            "query",
            False,
        ),
        _sessions_check(
            checks.IDLE_IN_TRANSACTION,
            activity.get("idle_in_transaction"),
            settings.MONITOR_IDLE_IN_TRANSACTION_SECONDS,
            "{n} idle in a transaction for more than {limit}: {sessions}. They hold locks and block vacuum; end "
            "them with pg_terminate_backend(pid).",
            "No session is idle in a transaction for more than {limit}.",
            "session",
            False,
        ),
        _sessions_check(
            checks.LOCKS,
            activity.get("lock_waits"),
            settings.MONITOR_LOCK_WAIT_SECONDS,
            "{n} waiting on a lock for more than {limit}: {sessions}.",
            "No session waits on a lock for more than {limit}.",
            "session",
            True,
        ),
        _connections(server),
        _workers(environment, activity.get("busy_workers")),
    ]
    return results


def _cron_overdue(crons: dict[str, Any] | None) -> CheckResult:
    if crons is None:
        return unknown(checks.CRON_OVERDUE, "The database has no ir_cron table with cron_name (not an Odoo database?).")
    overdue = crons.get("overdue") or []
    count = int(crons.get("overdue_count") or 0)
    limit = _duration(settings.MONITOR_CRON_OVERDUE_MINUTES * 60)
    if not count:
        return CheckResult(
            checks.CRON_OVERDUE,
            CheckStatus.OK,
            f"No active cron is more than {limit} past its next run.",
            0,
            {"active": crons.get("active")},
        )
    named = ", ".join(
        f"“{c.get('name')}” ("
        + (f"due {c['nextcall']} UTC, " if c.get("nextcall") else "")
        + f"{_duration(c.get('late_seconds') or 0)} late)"
        for c in overdue[:3]
    )
    more = f" and {count - 3} more" if count > 3 else ""
    message = (
        f"{_plural(count, 'cron')} past {'its' if count == 1 else 'their'} next run by more than {limit}: {named}{more}. "
        "Check that Odoo's cron workers run (--max-cron-threads) and look for a cron that never finishes in the logs."
    )
    return CheckResult(checks.CRON_OVERDUE, CheckStatus.FAILING, message, count, {"overdue": overdue})


def _cron_failures(environment: OdooEnvironment, rows: list[dict[str, Any]] | None, *, has_crons: bool) -> CheckResult:
    if rows is None:
        if has_crons:
            return unknown(
                checks.CRON_FAILURES,
                f"Odoo {environment.odoo_major} does not record cron failures in its database (ir_cron.failure_count "
                "is Odoo 17+): failing crons show only in the logs; overdue crons are checked.",
            )
        return unknown(checks.CRON_FAILURES, "The database has no ir_cron table.")
    if not rows:
        return CheckResult(
            checks.CRON_FAILURES,
            CheckStatus.OK,
            f"No cron failed {settings.MONITOR_CRON_FAILURE_COUNT} times or more in a row.",
            0,
        )
    named = ", ".join(
        f"“{r.get('name')}” ({_plural(int(r.get('failure_count') or 0), 'failure')} since {r.get('first_failure')} UTC)"
        for r in rows[:3]
    )
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    message = (
        f"{_plural(len(rows), 'cron')} failing: {named}{more}. Odoo deactivates a cron that keeps failing; the error "
        "is in Odoo's log."
    )
    return CheckResult(checks.CRON_FAILURES, CheckStatus.FAILING, message, len(rows), {"failing": rows})


def _queue_job(data: dict[str, Any] | None) -> CheckResult:
    if data is None:
        return unknown(checks.QUEUE_JOB, "queue_job is not installed.")
    counts = data.get("counts") or []
    by_state: dict[str, int] = {}
    for row in counts:
        by_state[str(row.get("state"))] = by_state.get(str(row.get("state")), 0) + int(row.get("jobs") or 0)
    failed = by_state.get("failed", 0)
    oldest = data.get("oldest_pending_seconds")
    limit = settings.MONITOR_QUEUE_JOB_AGE_MINUTES * 60
    details = {"counts": counts, "oldest_pending_seconds": oldest}
    summary = ", ".join(f"{state} {count}" for state, count in sorted(by_state.items())) or "no job waiting"
    if oldest is not None and oldest > limit:
        channel = data.get("oldest_pending_channel") or "root"
        message = (
            f"The oldest pending job (channel {channel}) waits for {_duration(oldest)}, more than "
            f"{_duration(limit)} ({summary}). Check that the job runner runs (ODOO_QUEUE_JOB_CHANNELS, "
            "--load=web,queue_job) and that its channel has capacity."
        )
        return CheckResult(checks.QUEUE_JOB, CheckStatus.FAILING, message, float(oldest), details)
    if failed:
        message = f"{_plural(failed, 'job')} failed ({summary}): requeue or cancel them in Queue Jobs."
        return CheckResult(checks.QUEUE_JOB, CheckStatus.WARNING, message, float(oldest or 0), details)
    message = f"Jobs: {summary}" + (f"; the oldest pending waits {_duration(oldest)}." if oldest else ".")
    return CheckResult(checks.QUEUE_JOB, CheckStatus.OK, message, float(oldest or 0), details)


def _growth(
    name: str,
    what: str,
    current: Any,
    previous: dict[str, Any] | None,
    now: datetime,
    size_limit_mb: int,
    growth_limit_mb: int,
) -> CheckResult:
    if current is None:
        return unknown(name, f"{what}'s size could not be read.")
    current = int(current)
    baseline_bytes = (previous or {}).get("baseline_bytes")
    baseline_at = (previous or {}).get("baseline_at")
    per_day: float | None = None
    details: dict[str, Any] = {"bytes": current, "baseline_bytes": current, "baseline_at": now.isoformat()}
    if isinstance(baseline_bytes, int) and isinstance(baseline_at, str):
        try:
            elapsed = (now - datetime.fromisoformat(baseline_at)).total_seconds()
        except (TypeError, ValueError):
            elapsed = -1
        if elapsed >= 0 and elapsed < DAY:
            details.update(baseline_bytes=baseline_bytes, baseline_at=baseline_at)
        if elapsed >= GROWTH_MIN_SECONDS:
            per_day = (current - baseline_bytes) / elapsed * DAY
            details["growth_bytes_per_day"] = round(per_day)
    text = f"{what} uses {_size(current)}" + (f", growing {_size(per_day)} a day" if per_day is not None else "")
    if size_limit_mb and current > size_limit_mb * MB:
        return CheckResult(
            name, CheckStatus.WARNING, f"{text}: more than the {_size(size_limit_mb * MB)} allowed.", current, details
        )
    if growth_limit_mb and per_day is not None and per_day > growth_limit_mb * MB:
        message = f"{text}: faster than the {_size(growth_limit_mb * MB)} a day allowed."
        return CheckResult(name, CheckStatus.WARNING, message, current, details)
    return CheckResult(name, CheckStatus.OK, text + ".", current, details)


def _sessions_check(
    name: str,
    rows: list[dict[str, Any]] | None,
    limit_seconds: int,
    failing: str,
    ok: str,
    noun: str,
    blocked: bool,
) -> CheckResult:
    limit = _duration(limit_seconds)
    if rows is None:
        return unknown(name, "pg_stat_activity could not be read.")
    if not rows:
        return CheckResult(name, CheckStatus.OK, ok.format(limit=limit), 0)
    message = failing.format(n=_plural(len(rows), noun), limit=limit, sessions=_sessions(rows, blocked=blocked))
    return CheckResult(name, CheckStatus.FAILING, message, len(rows), {"sessions": rows})


def _connections(server: dict[str, Any]) -> CheckResult:
    used, allowed = int(server.get("connections") or 0), int(server.get("max_connections") or 0)
    if not allowed:
        return unknown(checks.CONNECTIONS, "max_connections could not be read.")
    percent = 100.0 * used / allowed
    text = f"{used} of {allowed} connections in use ({percent:.0f} %)"
    details = {"connections": used, "max_connections": allowed}
    if percent >= settings.MONITOR_CONNECTIONS_PERCENT:
        message = (
            f"{text}, at or above {settings.MONITOR_CONNECTIONS_PERCENT} %: new connections will soon be refused. "
            "Lower db_maxconn × workers or raise max_connections."
        )
        return CheckResult(checks.CONNECTIONS, CheckStatus.FAILING, message, percent, details)
    return CheckResult(checks.CONNECTIONS, CheckStatus.OK, text + ".", percent, details)


def _workers(environment: OdooEnvironment, busy: Any) -> CheckResult:
    if environment.odoo_major < 15:
        return unknown(
            checks.WORKERS, f"Odoo {environment.odoo_major} does not name its database sessions per process."
        )
    if not environment.workers:
        return unknown(checks.WORKERS, "Odoo runs without --workers (threaded): busy workers are not measurable.")
    busy = int(busy or 0)
    percent = 100.0 * busy / environment.workers
    text = f"{busy} of {environment.workers} workers busy"
    if percent >= settings.MONITOR_WORKERS_BUSY_PERCENT:
        message = (
            f"{text} ({percent:.0f} %, at or above {settings.MONITOR_WORKERS_BUSY_PERCENT} %): requests queue up. "
            "Raise the environment's workers or find the slow requests in the logs."
        )
        return CheckResult(checks.WORKERS, CheckStatus.FAILING, message, percent, {"busy": busy})
    return CheckResult(checks.WORKERS, CheckStatus.OK, text + ".", percent, {"busy": busy})


def backup_age(environment_ids: Iterable[int], now: datetime) -> dict[int, CheckResult]:
    """The ``backup_age`` check of each environment: its newest verified backup against its schedule (two queries
    for all of them). Environments without a backup schedule are not measurable."""
    from backups.models import BackupSettings
    from backups.schedule import overdue_since
    from backups.scheduling import _newest_verified

    ids = list(environment_ids)
    configs = {c.environment_id: c for c in BackupSettings.objects.filter(environment_id__in=ids).exclude(schedule="")}
    newest = _newest_verified(configs)
    results: dict[int, CheckResult] = {}
    for env_id in ids:
        config = configs.get(env_id)
        if config is None:
            results[env_id] = unknown(checks.BACKUP_AGE, "No backup schedule: nothing to compare the backups with.")
            continue
        verified_at = newest.get(env_id)
        try:
            since = overdue_since(config.schedule, config.time_zone, verified_at, now)
        except Exception as exc:  # noqa: BLE001 - a bad stored schedule makes the check unknown, not the cycle fail
            results[env_id] = unknown(checks.BACKUP_AGE, f"The backup schedule could not be read: {exc}")
            continue
        age = (now - verified_at).total_seconds() if verified_at else None
        details = {"newest_verified_at": verified_at.isoformat() if verified_at else None}
        if since is None:
            message = f"The newest verified backup is {_duration(age or 0)} old, on schedule ({config.schedule})."
            results[env_id] = CheckResult(checks.BACKUP_AGE, CheckStatus.OK, message, age, details)
        elif verified_at is None:
            message = "There is no verified backup: take one (Backup now) and check that the scheduled ones succeed."
            results[env_id] = CheckResult(checks.BACKUP_AGE, CheckStatus.FAILING, message, None, details)
        else:
            message = (
                f"The newest verified backup is {_duration(age or 0)} old ({verified_at:%Y-%m-%d %H:%M} UTC): overdue "
                f"since {since:%Y-%m-%d %H:%M} UTC for the schedule {config.schedule}. Look at the failed backups "
                "of the environment."
            )
            results[env_id] = CheckResult(checks.BACKUP_AGE, CheckStatus.FAILING, message, age, details)
    return results


def previous_details(rows: Iterable[tuple[int, str, dict[str, Any]]]) -> dict[int, dict[str, dict[str, Any]]]:
    """``(environment_id, check name, details)`` rows as ``{environment_id: {name: details}}``."""
    found: dict[int, dict[str, dict[str, Any]]] = {}
    for env_id, name, details in rows:
        found.setdefault(env_id, {})[name] = details or {}
    return found
