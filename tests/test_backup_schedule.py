"""Backup schedules (backups.schedule): cron expression + IANA time zone; validation with actionable messages, the
next run across DST changes, and the every-minute fan-out's is_due (a backup missed while the panel was down runs
once, not once per missed run)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from backups.schedule import default_schedule, describe, is_due, next_run, overdue_since, validate_schedule

MADRID = ZoneInfo("Europe/Madrid")
NEW_YORK = ZoneInfo("America/New_York")


def fan_out(expr: str, tz: str, start: datetime, end: datetime, *, down: tuple[datetime, datetime] | None = None):
    """Simulate the fan-out task ticking every minute from start to end (not while the panel is down); return the
    instants at which it started a backup."""
    started: list[datetime] = []
    last_started = start
    tick = start
    while tick <= end:
        if not (down and down[0] <= tick < down[1]) and is_due(expr, tz, last_started, tick):
            started.append(tick)
            last_started = tick
        tick += timedelta(minutes=1)
    return started


def test_it_accepts_and_normalises_schedules():
    assert validate_schedule("0 3 * * *", "Europe/Madrid") == "0 3 * * *"
    assert validate_schedule("  30\t1  * *   1-5 ", "UTC") == "30 1 * * 1-5"
    assert validate_schedule("@daily", "UTC") == "0 0 * * *"
    assert validate_schedule("@WEEKLY", "UTC") == "0 0 * * 0"
    assert validate_schedule("0 */6 * * *", "Asia/Kathmandu") == "0 */6 * * *"
    assert validate_schedule("0 4 29 2 *", "UTC") == "0 4 29 2 *"  # leap days only, but it does fire
    assert validate_schedule("15 2 * * SUN", "America/New_York") == "15 2 * * SUN"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "Enter a cron expression"),
        ("   ", "Enter a cron expression"),
        (None, "Enter a cron expression"),
        (5, "Enter a cron expression"),
        ("0 3 * * *\x00", "digits, letters"),
        ("0 3 * * *\n0 4 * * *", "digits, letters"),
        ("٣ 3 * * *", "digits, letters"),  # an Arabic-Indic digit
        ("0 " * 200, "at most 100 characters"),
        ("0 3 * *", "five fields"),
        ("0 0 3 * * *", "five fields"),  # six fields: cronsim would read seconds
        ("@reboot", "five fields"),
        ("61 * * * *", "bad minute field"),
        ("0 24 * * *", "bad hour field"),
        ("0 3 * * 8", "bad day-of-week field"),
        ("0 3 */0 * *", "bad day-of-month field"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("* * * * *", "every 1 minute"),
        ("*/15 3 * * *", "every 15 minutes"),
        ("0,30 3 * * *", "every 30 minutes"),
    ],
)
def test_it_refuses_bad_expressions_with_a_message_a_person_can_act_on(expr, message):
    with pytest.raises(ValidationError) as caught:
        validate_schedule(expr, "UTC")
    assert message in caught.value.messages[0]
    assert len(caught.value.messages[0]) < 400


@pytest.mark.parametrize(
    "tz", ["", None, "Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe", "UTC\x00", "x" * 5000, 3]
)
def test_it_refuses_time_zones_that_are_not_iana_names(tz):
    with pytest.raises(ValidationError) as caught:
        validate_schedule("0 3 * * *", tz)
    assert "time zone" in caught.value.messages[0]
    assert "Europe/Madrid" in caught.value.messages[0]
    assert len(caught.value.messages[0]) < 300


@override_settings(BACKUP_SCHEDULE_MIN_INTERVAL_MINUTES=5)
def test_it_takes_the_minimum_interval_from_settings():
    assert validate_schedule("*/15 3 * * *", "UTC") == "*/15 3 * * *"
    with pytest.raises(ValidationError, match="every 1 minute"):
        validate_schedule("* * * * *", "UTC")
    assert validate_schedule("* * * * *", "UTC", min_interval=timedelta(minutes=1)) == "* * * * *"


def test_it_computes_the_next_run_in_the_schedules_time_zone():
    after = datetime(2026, 12, 1, 10, tzinfo=UTC)
    run = next_run("0 3 * * *", "Europe/Madrid", after)
    assert run == datetime(2026, 12, 2, 3, tzinfo=MADRID)
    assert run.astimezone(UTC) == datetime(2026, 12, 2, 2, tzinfo=UTC)  # CET is UTC+1
    assert next_run("0 3 * * *", "Asia/Tokyo", after).astimezone(UTC) == datetime(2026, 12, 1, 18, tzinfo=UTC)
    assert next_run("0 3 * * *", "UTC", after) == datetime(2026, 12, 2, 3, tzinfo=UTC)
    # Strictly after: a run at exactly ``after`` is not the next one.
    assert next_run("0 3 * * *", "UTC", datetime(2026, 12, 2, 3, tzinfo=UTC)) == datetime(2026, 12, 3, 3, tzinfo=UTC)
    # Day-of-month and day-of-week together mean either (Debian cron): the 1st or any Monday.
    assert next_run("0 3 1 * MON", "UTC", after) == datetime(2026, 12, 7, 3, tzinfo=UTC)


def test_it_runs_a_0230_schedule_at_0300_on_the_spring_forward_day():
    # Madrid skips 02:00-03:00 on 2026-03-29.
    first = next_run("30 2 * * *", "Europe/Madrid", datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert first == datetime(2026, 3, 29, 3, 0, tzinfo=MADRID)
    assert first.astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    second = next_run("30 2 * * *", "Europe/Madrid", first)
    assert second == datetime(2026, 3, 30, 2, 30, tzinfo=MADRID)
    assert second.astimezone(UTC) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)
    # New York too (2026-03-08).
    assert next_run("30 2 * * *", "America/New_York", datetime(2026, 3, 8, tzinfo=NEW_YORK)) == datetime(
        2026, 3, 8, 3, 0, tzinfo=NEW_YORK
    )


def test_it_runs_a_0230_schedule_once_on_the_fall_back_day():
    # Madrid repeats 02:00-03:00 on 2026-10-25: 02:30 CEST (00:30 UTC), then 02:30 CET (01:30 UTC).
    first = next_run("30 2 * * *", "Europe/Madrid", datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert next_run("30 2 * * *", "Europe/Madrid", first).astimezone(UTC) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    # Asked during the repeated hour, after the first 02:30 passed, the answer is tomorrow, not that 02:30.
    during = datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=MADRID)
    assert next_run("30 2 * * *", "Europe/Madrid", during).astimezone(UTC) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    starts = fan_out(
        "30 2 * * *", "Europe/Madrid", datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 4, tzinfo=UTC)
    )
    assert starts == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]


def test_it_runs_an_hourly_schedule_in_both_repeated_hours():
    start = datetime(2026, 10, 24, 22, 0, 30, tzinfo=UTC)  # 00:00:30 in Madrid on the 25-hour day
    runs = []
    moment = start
    while (moment := next_run("0 * * * *", "Europe/Madrid", moment)) < datetime(2026, 10, 25, 23, tzinfo=UTC):
        runs.append(moment.astimezone(UTC))
    # 01:00 to 23:00 local with 02:00 twice (00:00 and 01:00 UTC): 24 runs in the rest of the 25-hour day.
    assert len(runs) == 24
    assert runs == [datetime(2026, 10, 24, 23, tzinfo=UTC) + timedelta(hours=n) for n in range(24)]


def test_it_starts_a_missed_backup_once_when_the_panel_comes_back():
    start = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    end = datetime(2026, 11, 6, 12, 0, tzinfo=UTC)
    down = (datetime(2026, 11, 2, 1, 0, tzinfo=UTC), datetime(2026, 11, 4, 9, 17, tzinfo=UTC))
    starts = fan_out("0 3 * * *", "Europe/Madrid", start, end, down=down)
    assert starts == [
        datetime(2026, 11, 1, 2, 0, tzinfo=UTC),  # 03:00 CET
        datetime(2026, 11, 4, 9, 17, tzinfo=UTC),  # back up: one catch-up for the 2nd, 3rd and 4th
        datetime(2026, 11, 5, 2, 0, tzinfo=UTC),
        datetime(2026, 11, 6, 2, 0, tzinfo=UTC),
    ]


def test_it_starts_a_0230_backup_once_at_0300_over_the_spring_forward_weekend():
    starts = fan_out(
        "30 2 * * *", "Europe/Madrid", datetime(2026, 3, 28, 0, tzinfo=UTC), datetime(2026, 3, 30, 12, tzinfo=UTC)
    )
    assert [start.astimezone(MADRID) for start in starts] == [
        datetime(2026, 3, 28, 2, 30, tzinfo=MADRID),
        datetime(2026, 3, 29, 3, 0, tzinfo=MADRID),
        datetime(2026, 3, 30, 2, 30, tzinfo=MADRID),
    ]


def test_it_answers_is_due_for_the_edges():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert is_due("0 3 * * *", "UTC", None, now)  # never backed up: at once
    assert is_due("0 3 * * *", "UTC", now - timedelta(hours=10), now)  # 02:00 < 03:00 <= 12:00
    assert not is_due("0 3 * * *", "UTC", now - timedelta(hours=8), now)  # started at 04:00 today
    assert not is_due("0 3 * * *", "UTC", now + timedelta(hours=1), now)  # clock skew: in the future
    assert is_due("0 12 * * *", "UTC", now - timedelta(minutes=1), now)  # the run at exactly now counts
    assert not is_due("0 12 * * *", "UTC", now, now)
    assert not is_due("0 4 29 2 *", "UTC", datetime(2024, 2, 29, 4, tzinfo=UTC), now)  # next: 2028
    # Same instants, other zone: 03:00 in Tokyo is 18:00 UTC the day before.
    assert is_due("0 3 * * *", "Asia/Tokyo", datetime(2026, 11, 30, 17, tzinfo=UTC), now)
    assert not is_due("0 3 * * *", "Asia/Tokyo", datetime(2026, 11, 30, 19, tzinfo=UTC), now)
    with pytest.raises(ValueError, match="aware"):
        is_due("0 3 * * *", "UTC", None, datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="aware"):
        is_due("0 3 * * *", "UTC", datetime(2026, 12, 1), now)
    with pytest.raises(ValueError, match="aware"):
        next_run("0 3 * * *", "UTC", datetime(2026, 12, 1))
    with pytest.raises(ValidationError):
        next_run("61 * * * *", "UTC", now)
    with pytest.raises(ValidationError):
        is_due("0 3 * * *", "Nowhere/Land", now - timedelta(days=2), now)


@override_settings(BACKUP_SCHEDULE_PRODUCTION="0 2 * * *", BACKUP_SCHEDULE_OTHER="")
def test_it_describes_schedules_and_gives_production_a_daily_default():
    assert describe("0 3 * * *") == "At 03:00 every day"
    assert describe("@hourly") == "At the start of every hour"
    assert default_schedule(production=True) == "0 2 * * *"
    assert default_schedule(production=False) == ""


def test_it_flags_an_environment_whose_newest_verified_backup_is_older_than_its_schedule_allows():
    verified = datetime(2026, 12, 1, 3, 20, tzinfo=UTC)  # the 03:00 backup, verified at 03:20
    grace = timedelta(hours=4)
    # The next run is at 03:00 on the 2nd: flagged from 07:00 on, until a newer backup is verified.
    assert overdue_since("0 3 * * *", "UTC", verified, datetime(2026, 12, 2, 6, 59, tzinfo=UTC), grace=grace) is None
    assert overdue_since("0 3 * * *", "UTC", verified, datetime(2026, 12, 2, 7, 0, tzinfo=UTC), grace=grace) == (
        datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
    )
    assert overdue_since("0 3 * * *", "UTC", verified, datetime(2026, 12, 9, tzinfo=UTC), grace=grace) == datetime(
        2026, 12, 2, 7, 0, tzinfo=UTC
    )
    # In Madrid the run is at 02:00 UTC.
    assert overdue_since("0 3 * * *", "Europe/Madrid", verified, datetime(2026, 12, 2, 6, 30, tzinfo=UTC), grace=grace)
    # Never verified: overdue now. A schedule that never fires again: never overdue.
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert overdue_since("0 3 * * *", "UTC", None, now) == now
    assert overdue_since("0 4 29 2 *", "UTC", datetime(2024, 2, 29, 5, tzinfo=UTC), now) is None


@override_settings(BACKUP_OVERDUE_GRACE_MINUTES=30)
def test_it_takes_the_overdue_grace_from_settings():
    verified = datetime(2026, 12, 1, 3, 20, tzinfo=UTC)
    assert overdue_since("0 3 * * *", "UTC", verified, datetime(2026, 12, 2, 3, 29, tzinfo=UTC)) is None
    assert overdue_since("0 3 * * *", "UTC", verified, datetime(2026, 12, 2, 3, 30, tzinfo=UTC))
