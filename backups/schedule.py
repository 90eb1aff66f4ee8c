"""When is an environment's backup due: a cron expression in an IANA time zone.

A schedule is five cron fields (minute, hour, day of month, month, day of week; ``@daily``, ``@hourly``,
``@weekly``, ``@monthly`` and ``@yearly`` are accepted as shorthands) evaluated in the environment's time zone by
cronsim (the parser healthchecks.io uses). One fan-out task runs every minute and asks :func:`is_due` for each
environment; there is no beat entry per environment.

Daylight saving time follows Debian cron, as cronsim does: a job at a fixed time that falls in the hour skipped in
spring runs when the clocks have jumped (``30 2 * * *`` runs at 03:00 on that day in Europe/Madrid), and a fixed
time in the hour repeated in autumn runs once, at its first occurrence. Schedules with a wildcard hour or minute
(``0 * * * *``) follow real time, so they run in both repeated hours.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.core.exceptions import ValidationError

#: Longest expression or time zone name we look at; anything longer is refused before parsing.
MAX_EXPRESSION_LENGTH = 100
MAX_TIME_ZONE_LENGTH = 64

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

EXAMPLE = "for example '0 3 * * *' (every day at 03:00) or '30 1 * * 1-5' (01:30 on weekdays)"

#: How many upcoming runs the minimum-interval check looks at, and how far ahead at most.
_INTERVAL_SAMPLE_RUNS = 400
_INTERVAL_SAMPLE_SPAN = timedelta(days=32)


@functools.cache
def _time_zone_names() -> frozenset[str]:
    """The IANA names that this Python's tz database knows (read once)."""
    return frozenset(available_timezones())


def _zone(tz: object) -> ZoneInfo:
    """The time zone named ``tz``, or a ValidationError that says what is wrong."""
    if not isinstance(tz, str) or not tz.strip():
        raise ValidationError("Choose a time zone, an IANA name such as 'Europe/Madrid' or 'UTC'.", code="time_zone")
    if len(tz) > MAX_TIME_ZONE_LENGTH or not tz.isprintable() or tz not in _time_zone_names():
        shown = tz if len(tz) <= MAX_TIME_ZONE_LENGTH and tz.isprintable() else tz[:MAX_TIME_ZONE_LENGTH].encode()
        raise ValidationError(
            f"{shown!r} is not a time zone: use an IANA name such as 'Europe/Madrid', 'America/New_York' or 'UTC'.",
            code="time_zone",
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # listed, but its file is unreadable
        raise ValidationError(f"The time zone {tz!r} cannot be loaded on this panel.", code="time_zone") from exc


def _expression(expr: object) -> str:
    """The five-field form of ``expr`` (aliases expanded, blanks normalised), or a ValidationError."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValidationError(f"Enter a cron expression, {EXAMPLE}.", code="cron")
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise ValidationError(
            f"A cron expression has at most {MAX_EXPRESSION_LENGTH} characters; this one has {len(expr)}.",
            code="cron",
        )
    if not expr.isascii() or any(not (char.isprintable() or char in " \t") for char in expr):
        raise ValidationError(
            f"A cron expression is made of digits, letters and * , - / L #; {EXAMPLE}.",
            code="cron",
        )
    fields = expr.split()
    if len(fields) == 1 and fields[0].lower() in ALIASES:
        return ALIASES[fields[0].lower()]
    if len(fields) != 5:
        raise ValidationError(
            f"A cron expression has five fields (minute hour day-of-month month day-of-week), this one has "
            f"{len(fields)}; {EXAMPLE}.",
            code="cron",
        )
    return " ".join(fields)


def _runs(normalized: str, zone: ZoneInfo, after: datetime) -> CronSim:
    """cronsim's iterator of the runs strictly after ``after`` (raises CronSimError on a bad field)."""
    return CronSim(normalized, after.astimezone(zone))


def _aware(name: str, moment: datetime) -> None:
    """Refuse a naive datetime: a schedule has no meaning without knowing which instant is meant."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a time-zone aware datetime, not {moment!r}.")


def validate_schedule(expr: str, tz: str, *, min_interval: timedelta | None = None) -> str:
    """Check a schedule and return its normalised expression; raise ValidationError with a message a person can act on.

    Refused: a missing or overlong value, control characters, anything but five fields or an alias, a field
    cronsim rejects, an unknown time zone, an expression that never fires (``0 0 30 2 *``), and one that fires
    more often than ``min_interval`` (default: the BACKUP_SCHEDULE_MIN_INTERVAL_MINUTES setting).
    """
    normalized = _expression(expr)
    zone = _zone(tz)
    # A fixed reference point keeps validation deterministic; cronsim looks 50 years ahead for a first run.
    reference = datetime(2000, 1, 1, tzinfo=zone)
    try:
        runs = _runs(normalized, zone, reference)
        previous = next(runs)
    except CronSimError as exc:
        if _fields_valid_alone(normalized):
            raise ValidationError(
                f"{expr!r} never fires: no month has that day; check the day-of-month and month fields.", code="cron"
            ) from exc
        raise ValidationError(
            f"{expr!r} is not a valid cron expression ({str(exc).lower()} field); {EXAMPLE}.", code="cron"
        ) from exc
    except StopIteration as exc:
        raise ValidationError(
            f"{expr!r} never fires (no such date in 50 years); check the day-of-month and month fields.", code="cron"
        ) from exc
    if min_interval is None:
        min_interval = timedelta(minutes=settings.BACKUP_SCHEDULE_MIN_INTERVAL_MINUTES)
    # Durations between aware datetimes of one zone are wall-clock differences in Python: compare in UTC.
    previous = previous.astimezone(UTC)
    horizon = previous + _INTERVAL_SAMPLE_SPAN
    for _ in range(_INTERVAL_SAMPLE_RUNS):
        try:
            current = next(runs).astimezone(UTC)
        except StopIteration:
            break
        if current - previous < min_interval:
            raise ValidationError(
                f"{expr!r} starts a backup every {_duration(current - previous)}; backups may start at most every "
                f"{_duration(min_interval)} (for example '0 */6 * * *' for every six hours).",
                code="cron_interval",
            )
        if current > horizon:
            break
        previous = current
    return normalized


def _fields_valid_alone(normalized: str) -> bool:
    """Whether each field parses when the day of month is tried with every month (then only the pair is impossible)."""
    minute, hour, day, _month, weekday = normalized.split()
    try:
        CronSim(f"{minute} {hour} {day} * {weekday}", datetime(2000, 1, 1, tzinfo=UTC))
        CronSim(f"{minute} {hour} * {_month} {weekday}", datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError:
        return False
    return True


def _duration(delta: timedelta) -> str:
    """A short human form of a duration: '5 minutes', '1 hour 30 minutes'."""
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    parts = []
    if hours:
        parts.append(f"{hours} hour" + ("s" if hours != 1 else ""))
    if minutes or not parts:
        parts.append(f"{minutes} minute" + ("s" if minutes != 1 else ""))
    return " ".join(parts)


def next_run(expr: str, tz: str, after: datetime) -> datetime:
    """The first run of the schedule strictly after ``after`` (aware), as an aware datetime in the schedule's zone.

    The schedule must be valid (see :func:`validate_schedule`); an invalid one raises ValidationError. Raises
    ValueError when the expression never fires again.
    """
    _aware("after", after)
    after_utc = after.astimezone(UTC)
    normalized = _expression(expr)
    zone = _zone(tz)
    try:
        for run in _runs(normalized, zone, after):
            # cronsim computes fixed-time jobs on the naive local clock; in the repeated autumn hour that can give an
            # instant before ``after``: skip it.
            # (Compared in UTC: aware datetimes of one zone compare by wall clock, ignoring the repeated hour's fold.)
            if run.astimezone(UTC) > after_utc:
                return run
    except CronSimError as exc:
        raise ValidationError(f"{expr!r} is not a valid cron expression ({exc}).", code="cron") from exc
    raise ValueError(f"{expr!r} never fires after {after.isoformat()}.")


def is_due(expr: str, tz: str, last_started: datetime | None, now: datetime) -> bool:
    """Whether the fan-out task (every minute) should start a backup now.

    Due when a run of the schedule fell in ``(last_started, now]``. However many runs were missed while the panel
    was down, the answer is one backup: once it starts, ``last_started`` moves past them all. ``last_started=None``
    (the environment has never been backed up by its schedule) is due at once, so a new environment does not
    wait for its first run to have a backup. A ``last_started`` in the future (clock skew) is not due. A schedule
    that no longer validates (say its time zone left the tz database) raises ValidationError: the fan-out should
    log it against the environment and go on with the others.
    """
    _aware("now", now)
    if last_started is None:
        return True
    _aware("last_started", last_started)
    now_utc = now.astimezone(UTC)
    if last_started.astimezone(UTC) >= now_utc:
        return False
    try:
        return next_run(expr, tz, last_started).astimezone(UTC) <= now_utc
    except ValueError:
        return False


def overdue_since(
    expr: str, tz: str, newest_verified_at: datetime | None, now: datetime, *, grace: timedelta | None = None
) -> datetime | None:
    """Since when an environment's backups are overdue, or None when they are not (the flag of the backups page and
    the event for monitoring).

    Overdue once a run of the schedule after the newest verified backup has passed by more than ``grace`` (default:
    the BACKUP_OVERDUE_GRACE_MINUTES setting, time for the backup to run and be verified) without a newer verified
    backup. The answer is that run plus the grace. An environment without any verified backup is overdue since
    ``now``. A schedule that never fires again is never overdue.
    """
    _aware("now", now)
    if grace is None:
        grace = timedelta(minutes=settings.BACKUP_OVERDUE_GRACE_MINUTES)
    if newest_verified_at is None:
        return now
    _aware("newest_verified_at", newest_verified_at)
    try:
        deadline = next_run(expr, tz, newest_verified_at).astimezone(UTC) + grace
    except ValueError:
        return None
    return deadline if deadline <= now.astimezone(UTC) else None


def describe(expr: str) -> str:
    """The schedule in words (cronsim's explanation), e.g. 'At 03:00'; the expression itself when unavailable."""
    normalized = _expression(expr)
    try:
        return CronSim(normalized, datetime(2000, 1, 1, tzinfo=UTC)).explain()
    except Exception:  # noqa: BLE001 - an explanation is a nicety; never fail a page over it
        return normalized


def default_schedule(*, production: bool) -> str:
    """The schedule a new environment gets: BACKUP_SCHEDULE_PRODUCTION or BACKUP_SCHEDULE_OTHER ('' = none)."""
    return settings.BACKUP_SCHEDULE_PRODUCTION if production else settings.BACKUP_SCHEDULE_OTHER
