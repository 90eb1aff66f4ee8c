"""History: samples roll up into hourly and daily counts, retention prunes each layer, uptime windows and daily bars
(real PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring import history
from monitoring.models import Rollup, Sample, ServerRollup, ServerSample

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 10, tzinfo=UTC)


def _samples(env: Any, start: datetime, minutes: int, state: str, *, step: int = 1, **values: Any) -> None:
    """One sample every ``step`` minutes from ``start`` for ``minutes`` minutes."""
    Sample.objects.bulk_create(
        Sample(environment=env, at=start + timedelta(minutes=m), state=state, **values) for m in range(0, minutes, step)
    )


@pytest.fixture(params=["sql", "portable"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Run a reader test both ways: PostgreSQL's one query, and the portable readers SQLite uses (plain ORM queries
    summed in Python), which must give the same figures. Returns the queries each reader costs."""
    if request.param == "portable":
        monkeypatch.setattr(history, "_postgresql", lambda: False)
        return {"uptime": 4, "bars": 4}
    return {"uptime": 1, "bars": 1}


def _rollups(env: Any, period: str) -> dict[datetime, Rollup]:
    return {r.start: r for r in Rollup.objects.filter(environment=env, period=period)}


def test_it_rolls_samples_up_into_hourly_and_daily_counts(inventory: dict[str, Any]) -> None:
    env = inventory["env_a"]
    ten = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    _samples(env, ten, 50, "up", http_ms=100.0, cpu_percent=10.0)
    _samples(env, ten + timedelta(minutes=50), 5, "down")
    _samples(env, ten + timedelta(minutes=55), 5, "unknown")
    _samples(env, ten + timedelta(minutes=60), 30, "degraded", http_ms=300.0)
    _samples(env, ten + timedelta(minutes=90), 30, "maintenance")

    history.rollup(now=NOW)

    hours = _rollups(env, "hour")
    assert set(hours) == {ten, ten + timedelta(hours=1)}
    first, second = hours[ten], hours[ten + timedelta(hours=1)]
    assert (first.up, first.degraded, first.down, first.unknown, first.maintenance) == (50, 0, 5, 5, 0)
    assert first.http_ms_avg == pytest.approx(100.0) and first.http_ms_max == pytest.approx(100.0)
    assert (second.up, second.degraded, second.down, second.unknown, second.maintenance) == (0, 30, 0, 0, 30)
    day = _rollups(env, "day")[datetime(2026, 11, 30, tzinfo=UTC)]
    assert (day.up, day.degraded, day.down, day.unknown, day.maintenance) == (50, 30, 5, 5, 30)
    # Averages over the day weigh each hour by its polls: 60 polls at 100 ms (50 with a value) and 60 at 300 (30).
    assert day.http_ms_avg == pytest.approx((100.0 * 60 + 300.0 * 60) / 120)
    assert day.http_ms_max == pytest.approx(300.0)

    # Idempotent: running it again changes nothing; nor do two workers at once.
    before = list(Rollup.objects.order_by("id").values())
    history.rollup(now=NOW)
    assert list(Rollup.objects.order_by("id").values()) == before


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_same_rollups_when_two_workers_run_it_at_once(inventory: dict[str, Any]) -> None:
    env = inventory["env_a"]
    _samples(env, NOW - timedelta(hours=3), 180, "up")
    _samples(env, NOW - timedelta(minutes=30), 20, "down")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            history.rollup(now=NOW)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    hours = _rollups(env, "hour")
    assert len(hours) == 3  # 09:00 (from 09:10), 10:00, 11:00; 12:00 has not ended
    assert sum(r.up for r in hours.values()) == 170 and sum(r.down for r in hours.values()) == 20
    assert Rollup.objects.filter(environment=env, period="day").count() == 1


def test_it_rolls_servers_up_too(inventory: dict[str, Any]) -> None:
    server = inventory["server_a"]
    ten = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    ServerSample.objects.bulk_create(
        [
            ServerSample(
                server=server,
                at=ten + timedelta(minutes=m),
                reachable=m % 4 != 0,
                load1=float(m % 2),
                disk_used_bytes=1000 + m,
            )
            for m in range(60)
        ]
    )
    history.rollup(now=NOW)
    hour = ServerRollup.objects.get(server=server, period="hour")
    assert (hour.start, hour.reachable, hour.unreachable) == (ten, 45, 15)
    assert hour.load1_avg == pytest.approx(0.5) and hour.disk_used_bytes_max == 1059
    day = ServerRollup.objects.get(server=server, period="day")
    assert (day.reachable, day.unreachable, day.disk_used_bytes_max) == (45, 15, 1059)


def test_it_prunes_each_layer_past_its_retention(inventory: dict[str, Any]) -> None:
    env, server = inventory["env_a"], inventory["server_a"]
    _samples(env, NOW - timedelta(hours=30), 60, "up")  # older than 24 h: rolled up, then pruned
    _samples(env, NOW - timedelta(hours=2), 60, "up")  # kept
    ServerSample.objects.create(server=server, at=NOW - timedelta(hours=30), reachable=True)
    ServerSample.objects.create(server=server, at=NOW - timedelta(hours=1), reachable=True)
    old_hour = datetime(2026, 10, 1, 5, tzinfo=UTC)  # 60 days ago: past the hourly retention
    Rollup.objects.create(environment=env, period="hour", start=old_hour, up=60)
    Rollup.objects.create(environment=env, period="day", start=datetime(2025, 9, 1, tzinfo=UTC), up=1)
    Rollup.objects.create(environment=env, period="day", start=datetime(2026, 1, 1, tzinfo=UTC), up=1)

    counts = history.rollup(now=NOW)

    assert counts["pruned_samples"] == 60
    assert Sample.objects.filter(environment=env).count() == 60
    assert min(Sample.objects.values_list("at", flat=True)) >= NOW - timedelta(hours=25)
    assert ServerSample.objects.count() == 1
    hours = _rollups(env, "hour")
    assert old_hour not in hours
    # The pruned samples live on in their hourly rollups.
    assert sum(r.up for start, r in hours.items() if start < NOW - timedelta(hours=24)) == 60
    assert sum(r.up for r in hours.values()) == 120
    days = _rollups(env, "day")
    assert datetime(2025, 9, 1, tzinfo=UTC) not in days  # older than 400 days
    assert datetime(2026, 1, 1, tzinfo=UTC) in days


def test_it_computes_uptime_windows_from_samples_and_rollups(inventory: dict[str, Any], reader: dict[str, int]) -> None:
    env, other = inventory["env_a"], inventory["env_b"]
    # The last 24 hours from samples: 90 up, 10 down, unknown and maintenance left out.
    _samples(env, NOW - timedelta(hours=2), 90, "up")
    _samples(env, NOW - timedelta(minutes=30), 10, "down")
    _samples(env, NOW - timedelta(minutes=20), 15, "unknown")
    _samples(env, NOW - timedelta(minutes=5), 5, "maintenance")
    # Three days ago (hourly rollups): 100 up, 100 down.  Sixty days ago (daily): 800 up.
    three_days = NOW.replace(minute=0) - timedelta(days=3)
    Rollup.objects.create(environment=env, period="hour", start=three_days, up=100, down=100)
    sixty = datetime(2026, 10, 1, tzinfo=UTC)
    Rollup.objects.create(environment=env, period="day", start=sixty, up=800)
    # A daily rollup that overlaps the hourly range must not be counted twice.
    Rollup.objects.create(environment=env, period="day", start=three_days.replace(hour=0), up=100, down=100)

    with CaptureQueriesContext(connection) as queries:
        found = history.uptime([env.id, other.id], now=NOW)
    assert len(queries) == reader["uptime"]
    assert found[env.id]["24h"] == pytest.approx(90 / 100)
    assert found[env.id]["7d"] == pytest.approx(190 / 300)
    assert found[env.id]["30d"] == pytest.approx(190 / 300)
    assert found[env.id]["365d"] == pytest.approx(990 / 1100)
    assert found[other.id] == {"24h": None, "7d": None, "30d": None, "365d": None}


def test_it_gives_the_same_uptime_from_rollups_as_from_the_samples_alone(
    inventory: dict[str, Any], reader: dict[str, int]
) -> None:
    env = inventory["env_a"]
    start = NOW - timedelta(hours=30)
    Sample.objects.bulk_create(
        Sample(environment=env, at=start + timedelta(minutes=m), state=("down" if m % 7 == 0 else "up"))
        for m in range(30 * 60)
    )
    windows = ("3h", "24h")
    from_samples = history.uptime([env.id], windows, now=NOW)[env.id]
    history.rollup(now=NOW)
    assert Sample.objects.filter(at__lt=NOW.replace(minute=0)).exists()  # samples the readers now skip
    hourly = Rollup.objects.filter(environment=env, period="hour")
    assert max(hourly.values_list("start", flat=True)) == NOW.replace(minute=0) - timedelta(hours=1)
    with CaptureQueriesContext(connection) as queries:
        from_rollups = history.uptime([env.id], (*windows, "7d"), now=NOW)[env.id]
    assert len(queries) == reader["uptime"]
    for window in windows:
        minutes = [m for m in range(30 * 60) if start + timedelta(minutes=m) >= NOW - history.window_delta(window)]
        expected = sum(1 for m in minutes if m % 7) / len(minutes)
        assert from_samples[window] == pytest.approx(expected)
        assert from_rollups[window] == pytest.approx(expected)
    assert from_rollups["7d"] == pytest.approx(sum(1 for m in range(30 * 60) if m % 7) / (30 * 60))


def test_it_draws_daily_bars_with_an_outage_in_its_day(inventory: dict[str, Any], reader: dict[str, int]) -> None:
    env = inventory["env_a"]
    outage_day = (NOW - timedelta(days=5)).replace(hour=0, minute=0)
    # Five days ago: 23 hours up, then one hour down (every minute), rolled up from samples seeded "in the past".
    _samples(env, outage_day, 23 * 60, "up", step=30)
    _samples(env, outage_day + timedelta(hours=23), 60, "down")
    _samples(env, NOW - timedelta(hours=3), 60, "up")
    history.rollup(now=outage_day + timedelta(days=1, hours=1))  # the nightly rollup of that day
    history.rollup(now=NOW)

    with CaptureQueriesContext(connection) as queries:
        bars = history.daily_bars([env.id], days=90, now=NOW)[env.id]
    assert len(queries) == reader["bars"]
    assert len(bars) == 90
    assert bars[-1]["day"] == NOW.date() and bars[0]["day"] == NOW.date() - timedelta(days=89)
    by_day = {bar["day"]: bar for bar in bars}
    outage = by_day[outage_day.date()]
    assert outage["uptime"] == pytest.approx(46 / 106)
    assert outage["down_minutes"] == 30  # 60 down samples x the 30 s poll interval
    assert by_day[NOW.date()]["uptime"] == 1.0 and by_day[NOW.date()]["down_minutes"] == 0
    assert by_day[(NOW - timedelta(days=1)).date()]["uptime"] is None


def test_it_costs_the_same_queries_for_many_environments(inventory: dict[str, Any], reader: dict[str, int]) -> None:
    from panel.inventory.models import Environment

    env = inventory["env_a"]
    envs = [
        Environment.objects.create(
            project=env.project,
            server=env.server,
            name=f"e{i}",
            compose_files=["prod.yaml"],
            compose_project=f"shop-e{i}",
        )
        for i in range(50)
    ]
    for other in envs[:10]:
        _samples(other, NOW - timedelta(hours=1), 10, "up")
    ids = [e.id for e in envs]
    with CaptureQueriesContext(connection) as queries:
        history.uptime(ids, now=NOW)
        history.daily_bars(ids, now=NOW)
    assert len(queries) == reader["uptime"] + reader["bars"]


def test_it_refuses_unknown_windows() -> None:
    with pytest.raises(ValueError):
        history.uptime([1], windows=("1y",))


def test_it_runs_as_a_periodic_task_on_the_monitoring_queue(inventory: dict[str, Any]) -> None:
    from django.conf import settings

    from monitoring import tasks
    from panel.celery import app

    app.finalize()  # registers the beat schedule
    entry = app.conf.beat_schedule["monitoring-rollup"]
    assert entry["task"] == "monitoring.tasks.rollup" and entry["options"]["queue"] == "monitoring"
    assert entry["schedule"] == settings.MONITOR_ROLLUP_INTERVAL
    _samples(inventory["env_a"], datetime.now(UTC) - timedelta(hours=3), 60, "up")
    counts = tasks.rollup.apply().get()
    assert counts["environment_hourly"] >= 1
    assert Rollup.objects.filter(environment=inventory["env_a"], period="hour").exists()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_portable_readers_give_what_the_sql_gives(
    inventory: dict[str, Any], monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Random histories (samples, hourly and daily rollups, environments rolled up at different times): SQLite's
    readers and PostgreSQL's query agree on every window and every bar."""
    import random

    from panel.inventory.models import Environment

    rng = random.Random(seed)
    base = inventory["env_a"]
    envs = [base] + [
        Environment.objects.create(
            project=base.project, server=base.server, name=f"r{i}", compose_files=["prod.yaml"],
            compose_project=f"shop-r{i}",
        )
        for i in range(4)
    ]  # fmt: skip
    states = ["up"] * 6 + ["degraded", "down", "unknown", "maintenance"]
    for env in envs:
        Sample.objects.bulk_create(
            Sample(environment=env, at=NOW - timedelta(minutes=rng.randrange(0, 27 * 60)), state=rng.choice(states))
            for _ in range(rng.randrange(0, 300))
        )
        for hour in rng.sample(range(25, 40 * 24), 60):
            start = (NOW - timedelta(hours=hour)).replace(minute=0)
            Rollup.objects.get_or_create(
                environment=env, period="hour", start=start,
                defaults={"up": rng.randrange(60), "degraded": rng.randrange(5), "down": rng.randrange(10)},
            )  # fmt: skip
        for day in rng.sample(range(1, 400), 80):
            start = (NOW - timedelta(days=day)).replace(hour=0, minute=0)
            Rollup.objects.get_or_create(
                environment=env, period="day", start=start,
                defaults={"up": rng.randrange(2000), "degraded": rng.randrange(50), "down": rng.randrange(300)},
            )  # fmt: skip
        if rng.random() < 0.6:  # this one's newest hours are rolled up (its edge moves past B)
            newest = (NOW - timedelta(hours=rng.randrange(1, 6))).replace(minute=0)
            Rollup.objects.update_or_create(environment=env, period="hour", start=newest, defaults={"up": 42})
    ids = [env.id for env in envs]
    windows = ("1h", "3h", "24h", "25h", "7d", "30d", "45d", "365d")
    now = NOW + timedelta(seconds=rng.randrange(3600))
    sql_uptime = history.uptime(ids, windows, now=now)
    sql_bars = history.daily_bars(ids, days=90, now=now)
    monkeypatch.setattr(history, "_postgresql", lambda: False)
    portable_uptime = history.uptime(ids, windows, now=now)
    rounded = {env: {w: None if v is None else round(v, 12) for w, v in per.items()} for env, per in sql_uptime.items()}
    assert {
        env: {w: None if v is None else round(v, 12) for w, v in per.items()} for env, per in portable_uptime.items()
    } == rounded
    assert history.daily_bars(ids, days=90, now=now) == sql_bars
    assert any(value is not None for per_env in sql_uptime.values() for value in per_env.values())
