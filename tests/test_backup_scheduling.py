"""The schedule fan-out and the overdue flag on real PostgreSQL rows, with the time passed in; one run of the
periodic task in a real Celery worker."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from backups.models import Backup, BackupSettings
from backups.scheduling import EVENT_ON_SCHEDULE, EVENT_OVERDUE, record_overdue, run_schedules
from monitoring.models import Event
from panel.inventory.models import Environment
from panel.jobs.models import Job
from tests.backup_fixtures import make_local_storage
from tests.backup_rows import make_backup


@pytest.fixture
def storage_row(inventory: dict[str, Any], backup_root: Path) -> Any:
    return make_local_storage(inventory["project_a"].organization, backup_root)


def _environment(inventory: dict[str, Any], name: str, storage_row: Any, schedule: str = "@daily") -> Environment:
    environment = Environment.objects.create(
        project=inventory["project_a"], server=inventory["server_a"], name=name, compose_files=["prod.yaml"],
        compose_project=f"shop-16-0-{name}",
    )  # fmt: skip
    BackupSettings.objects.create(environment=environment, storage=storage_row, schedule=schedule, time_zone="UTC")
    return environment


def _scheduled_backup(environment: Environment, storage_row: Any, started_at: Any, status: str = "good") -> Backup:
    return Backup.objects.create(
        environment=environment, storage=storage_row, kind="scheduled", status=status, started_at=started_at,
        finished_at=started_at, manifest={"objects": []}, key_prefix=f"backups/x/{environment.pk}-{started_at:%s}",
    )  # fmt: skip


def _end(environment: Environment) -> None:
    """The environment's backup job ends (the backup failed)."""
    Job.objects.filter(environment=environment, status__in=["queued", "running"]).update(
        status="failed", reason="test", finished_at=timezone.now()
    )


def test_it_starts_the_due_backups_at_most_k_per_server(
    inventory: dict[str, Any], storage_row: Any, settings: Any
) -> None:
    settings.BACKUP_MAX_PER_SERVER = 2
    now = timezone.now()
    envs = [_environment(inventory, f"e{i}", storage_row) for i in range(4)]
    # e0 waited longest, then e1, e2; e3 was backed up a moment ago (not due); none on another server counts.
    for hours, environment in zip((50, 40, 30), envs, strict=False):
        _scheduled_backup(environment, storage_row, now - timedelta(hours=hours))
    _scheduled_backup(envs[3], storage_row, now - timedelta(seconds=1))
    report = run_schedules(now)
    assert report.started == [envs[0].pk, envs[1].pk]
    assert report.server_full == [envs[2].pk]
    started = Backup.objects.filter(environment__in=envs[:2], kind="scheduled", status="running")
    assert started.count() == 2
    assert {backup.job.trigger for backup in started} == {"schedule"}
    assert {backup.job.kind for backup in started} == {"backup"}

    # Still two running: e2 waits. A started environment is not due again.
    report = run_schedules(now + timedelta(minutes=1))
    assert report.started == [] and report.server_full == [envs[2].pk]
    # One ends: e2 gets its turn at the next minute.
    _end(envs[0])
    report = run_schedules(timezone.now() + timedelta(minutes=2))
    assert report.started == [envs[2].pk]
    assert Backup.objects.filter(environment=envs[0], status="interrupted").count() == 1  # settled, not good


def test_it_leaves_an_environment_a_deploy_holds_for_the_next_minute(
    inventory: dict[str, Any], storage_row: Any
) -> None:
    environment = _environment(inventory, "held", storage_row)
    deploy = Job.objects.create(
        kind="deploy", organization=environment.project.organization, environment=environment,
        lock_key=f"environment:{environment.pk}", status="running",
    )  # fmt: skip
    now = timezone.now()
    report = run_schedules(now)
    assert report.busy == [environment.pk] and report.started == []
    assert not Backup.objects.filter(environment=environment).exists()
    Job.objects.filter(pk=deploy.pk).update(status="succeeded", finished_at=now)
    report = run_schedules(now + timedelta(minutes=1))
    assert report.started == [environment.pk]


def test_it_logs_a_schedule_that_no_longer_validates_and_carries_on(
    inventory: dict[str, Any], storage_row: Any, caplog: Any
) -> None:
    broken = _environment(inventory, "broken", storage_row)
    fine = _environment(inventory, "fine", storage_row)
    # Stored when it was valid; the time zone has since left the tz database.
    BackupSettings.objects.filter(environment=broken).update(time_zone="Europe/Atlantis")
    _scheduled_backup(broken, storage_row, timezone.now() - timedelta(days=2))
    with caplog.at_level(logging.WARNING, logger="backups.scheduling"):
        report = run_schedules(timezone.now())
    assert report.invalid == [broken.pk] and report.started == [fine.pk]
    assert f"environment {broken.pk}" in caplog.text and "Europe/Atlantis" in caplog.text
    assert not Backup.objects.filter(environment=broken, status="running").exists()


def test_it_records_the_overdue_flag_once_per_overdue_period(
    inventory: dict[str, Any], storage_row: Any, settings: Any
) -> None:
    settings.BACKUP_OVERDUE_GRACE_MINUTES = 60
    environment = _environment(inventory, "late", storage_row)
    newcomer = _environment(inventory, "new", storage_row)
    now = timezone.now()
    make_backup(environment, storage_row, started_at=now - timedelta(days=3))
    # The newcomer's first backup started a minute ago: it is being taken, not overdue.
    _scheduled_backup(newcomer, storage_row, now - timedelta(minutes=1), status="running")

    def flags(env: Environment) -> list[str]:
        return list(Event.objects.filter(environment=env).order_by("created_at", "id").values_list("kind", flat=True))

    assert record_overdue(now) == [environment.pk]
    assert record_overdue(now + timedelta(minutes=1)) == [environment.pk]
    assert flags(environment) == [EVENT_OVERDUE]
    event = Event.objects.get(environment=environment)
    assert event.severity == "warning" and "overdue since" in event.message
    assert event.organization == environment.project.organization
    assert flags(newcomer) == []

    # A verified backup ends the period (one event saying so); the next missed run starts a new one.
    make_backup(environment, storage_row, started_at=now + timedelta(minutes=2))
    assert record_overdue(now + timedelta(minutes=3)) == []
    assert record_overdue(now + timedelta(minutes=4)) == []
    assert flags(environment) == [EVENT_OVERDUE, EVENT_ON_SCHEDULE]
    later = now + timedelta(days=2)
    assert environment.pk in record_overdue(later)
    assert flags(environment) == [EVENT_OVERDUE, EVENT_ON_SCHEDULE, EVENT_OVERDUE]
    # The newcomer's first backup never became good: once it is older than the grace, it is overdue too.
    assert newcomer.pk in record_overdue(now + timedelta(hours=2))


def test_the_fan_out_records_the_overdue_flag_too(inventory: dict[str, Any], storage_row: Any) -> None:
    environment = _environment(inventory, "never", storage_row)
    _scheduled_backup(environment, storage_row, timezone.now() - timedelta(days=2), status="failed")
    report = run_schedules(timezone.now())
    assert report.started == [environment.pk]
    assert report.overdue == [environment.pk]
    assert Event.objects.filter(environment=environment, kind=EVENT_OVERDUE).count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_runs_the_periodic_task_in_a_real_worker(
    monitoring_worker: Any, inventory: dict[str, Any], storage_row: Any
) -> None:
    from backups.tasks import run_schedules as task

    environment = _environment(inventory, "worker", storage_row)
    task.delay()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not Backup.objects.filter(environment=environment).exists():
        time.sleep(0.2)
    backup = Backup.objects.get(environment=environment)
    assert backup.kind == "scheduled" and backup.job is not None and backup.job.trigger == "schedule"
