"""Retention pruning on a real local-directory storage and real rows: the pruned backups' objects and the filestore
files no remaining backup lists are really gone; everything a kept, newest-verified or in-use backup needs stays."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from backups.models import Backup, BackupSettings, FilestoreObject
from backups.scheduling import prune
from panel.inventory.models import Environment
from panel.jobs.models import Job
from tests.backup_fixtures import make_local_storage
from tests.backup_rows import make_backup, store_file

SHARED = b"the logo every backup lists\n"


@pytest.fixture
def keep_three(settings: Any) -> None:
    settings.BACKUP_KEEP_DAILY = 3
    Environment.objects.update(backup_keep_daily=3)  # the environment's own count is what retention uses
    settings.BACKUP_KEEP_WEEKLY = 0
    settings.BACKUP_KEEP_MONTHLY = 0
    settings.BACKUP_KEEP_UNVERIFIED_HOURS = 24


@pytest.fixture
def history(inventory: dict[str, Any], backup_root: Path, keep_three: None) -> dict[str, Any]:
    """Ten daily verified backups of env_a, newest first; each lists the shared file and one of its own."""
    environment = inventory["env_a"]
    environment.refresh_from_db()  # keep_three set its count of daily backups
    storage_row = make_local_storage(environment.project.organization, backup_root)
    BackupSettings.objects.create(environment=environment, storage=storage_row, schedule="@daily")
    now = timezone.now()
    backups = [
        make_backup(environment, storage_row, files=[SHARED, f"only in day {day}\n".encode()],
                    started_at=now - timedelta(days=day, hours=1))
        for day in range(10)
    ]  # fmt: skip
    return {"environment": environment, "storage": storage_row, "root": backup_root, "backups": backups, "now": now}


def _files(backup: Backup) -> list[str]:
    return [entry["key"] for entry in backup.manifest["objects"] if entry["role"] == "filestore"]


def _own(backup: Backup) -> list[str]:
    entries = [*backup.manifest["objects"], backup.manifest["manifest_object"]]
    return [entry["key"] for entry in entries if entry["role"] != "filestore"]


def _exists(root: Path, key: str) -> bool:
    return (root / key).is_file()


def test_it_deletes_pruned_backups_and_only_the_files_no_kept_backup_lists(history: dict[str, Any]) -> None:
    root, backups = history["root"], history["backups"]
    # What an interrupted backup uploaded and never listed goes too.
    orphan = store_file(history["storage"], b"uploaded by a backup that was killed\n")
    report = prune(history["now"])
    kept, pruned = backups[:3], backups[3:]
    assert not _exists(root, orphan.key)
    assert sorted(report.backups) == sorted(backup.pk for backup in pruned)
    assert set(Backup.objects.values_list("pk", flat=True)) == {backup.pk for backup in kept}
    for backup in pruned:
        assert not any(_exists(root, key) for key in _own(backup))
        assert not (root / backup.key_prefix).exists() or not any((root / backup.key_prefix).iterdir())
        assert not _exists(root, _files(backup)[1])  # its own file went with it
    for backup in kept:
        assert all(_exists(root, key) for key in _own(backup) + _files(backup))
    shared_key = _files(backups[0])[0]
    assert _exists(root, shared_key)  # every pruned backup listed it, but so do the kept ones
    assert report.filestore_objects == len(pruned) + 1
    assert set(FilestoreObject.objects.values_list("key", flat=True)) == {
        key for backup in kept for key in _files(backup)
    }
    # Nothing more to do the next time.
    again = prune(history["now"])
    assert again.backups == [] and again.filestore_objects == 0


def test_it_never_prunes_the_newest_verified_or_a_backup_a_restore_uses(
    history: dict[str, Any], inventory: dict[str, Any], settings: Any
) -> None:
    Environment.objects.update(backup_keep_daily=0)
    root, backups = history["root"], history["backups"]
    # A restore of the oldest backup into another environment (its lock is that environment's).
    staging = inventory["env_b"]
    Job.objects.create(
        kind="restore", organization=staging.project.organization, environment=staging,
        lock_key=f"environment:{staging.pk}", status="running", params={"backup_id": backups[-1].pk},
    )  # fmt: skip
    # A verify of another one reads it too.
    environment = history["environment"]
    Job.objects.create(
        kind="verify", organization=environment.project.organization, environment=environment,
        lock_key=f"backup:{backups[-2].pk}", status="queued", params={"backup_id": backups[-2].pk},
    )  # fmt: skip
    # A failed backup older than the grace is pruned too.
    make_backup(history["environment"], history["storage"], status="failed",
                started_at=history["now"] - timedelta(hours=30))  # fmt: skip
    report = prune(history["now"])
    remaining = set(Backup.objects.values_list("pk", flat=True))
    assert remaining == {backups[0].pk, backups[-2].pk, backups[-1].pk}
    assert len(report.backups) == 8
    for backup in (backups[0], backups[-2], backups[-1]):
        assert all(_exists(root, key) for key in _own(backup) + _files(backup))


def test_it_skips_an_environment_while_a_job_holds_it(history: dict[str, Any]) -> None:
    environment, root = history["environment"], history["root"]
    Job.objects.create(
        kind="backup", organization=environment.project.organization, environment=environment,
        lock_key=f"environment:{environment.pk}", status="running",
    )  # fmt: skip
    report = prune(history["now"])
    assert report.backups == [] and "holds it" in report.skipped[environment.pk]
    assert Backup.objects.count() == 10
    assert all(_exists(root, key) for backup in history["backups"] for key in _own(backup) + _files(backup))


def test_it_keeps_files_while_a_backup_into_the_storage_runs_and_those_another_environment_lists(
    history: dict[str, Any], inventory: dict[str, Any]
) -> None:
    root, storage_row, backups = history["root"], history["storage"], history["backups"]
    # staging (same storage) keeps a backup that lists day 9's own file (a copy of production's filestore).
    staging = Environment.objects.create(
        project=inventory["project_a"], server=inventory["server_a"], name="staging", compose_files=["s.yaml"],
        compose_project="shop-16-0-staging",
    )  # fmt: skip
    copy = make_backup(staging, storage_row, files=[b"only in day 9\n"], started_at=history["now"])
    job = Job.objects.create(
        kind="backup", organization=staging.project.organization, environment=staging,
        lock_key=f"environment:{staging.pk}", status="running",
    )  # fmt: skip
    running = make_backup(staging, storage_row, status="running", started_at=history["now"], job=job)
    report = prune(history["now"], environments=[history["environment"]])
    assert len(report.backups) == 7
    assert report.filestore_objects == 0
    assert any("is running" in error for error in report.errors)
    assert all(_exists(root, key) for backup in backups[3:] for key in _files(backup))  # not yet
    # The backup ends: the next run deletes the files only pruned backups listed, but not what staging lists.
    Job.objects.filter(pk=job.pk).update(status="failed", reason="test", finished_at=timezone.now())
    Backup.objects.filter(pk=running.pk).update(status="failed")
    report = prune(history["now"], environments=[history["environment"]])
    assert report.filestore_objects == 6
    assert _exists(root, _files(copy)[0])
    assert not _exists(root, _files(backups[8])[1])
