"""Pre-deploy and pre-restore backups' own retention, and the storage lock between retention and a running backup,
on real PostgreSQL rows and a real local-directory storage (the deploy itself: tests/test_backup_predeploy_lab.py).
"""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from backups import retention
from backups.locks import claim_filestore_objects
from backups.models import Backup, BackupSettings, FilestoreObject
from backups.predeploy import store_pre_deploy_backup
from backups.scheduling import prune
from backups.storage import open_storage
from deployments import hooks
from tests.backup_fixtures import make_local_storage
from tests.backup_rows import make_backup, store_file

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def env_storage(inventory: dict[str, Any], backup_root: Path, settings: Any) -> dict[str, Any]:
    # The old backups these tests prune are pre-deploy ones beyond this count (whatever the GFS counts say).
    settings.BACKUP_KEEP_PRE_DEPLOY = 0
    settings.BACKUP_KEEP_PRE_RESTORE = 0
    environment = inventory["env_a"]
    storage_row = make_local_storage(environment.project.organization, backup_root)
    BackupSettings.objects.create(environment=environment, storage=storage_row)
    return {"environment": environment, "storage": storage_row, "root": backup_root, "now": timezone.now()}


def test_it_keeps_only_the_newest_pre_deploy_and_pre_restore_backups_and_every_imported_one(
    env_storage: dict[str, Any], settings: Any
) -> None:
    settings.BACKUP_KEEP_PRE_DEPLOY = 2
    settings.BACKUP_KEEP_PRE_RESTORE = 1
    environment, storage_row, now = env_storage["environment"], env_storage["storage"], env_storage["now"]
    nightly = make_backup(environment, storage_row, files=[b"logo\n"], started_at=now - timedelta(minutes=1))

    def history(kind: str, count: int) -> list[Backup]:
        return [
            make_backup(environment, storage_row, kind=kind, files=[f"{kind} {n}\n".encode()],
                        started_at=now - timedelta(hours=n + 1))
            for n in range(count)
        ]  # fmt: skip

    pre_deploy, pre_restore, imported = history("pre-deploy", 4), history("pre-restore", 3), history("imported", 2)
    report = prune(now)
    kept = set(Backup.objects.values_list("pk", flat=True))
    assert kept == {nightly.pk, *(b.pk for b in pre_deploy[:2]), pre_restore[0].pk, *(b.pk for b in imported)}
    assert sorted(report.backups) == sorted(b.pk for b in pre_deploy[2:] + pre_restore[1:])
    # The pruned ones' own files are gone; the kept ones' are there.
    root = env_storage["root"]
    for backup in pre_deploy[2:] + pre_restore[1:]:
        assert not any((root / e["key"]).exists() for e in backup.manifest["objects"])
    for backup in Backup.objects.all():
        assert all((root / e["key"]).is_file() for e in backup.manifest["objects"])
    plan = retention.plan_retention(
        [retention.BackupRecord(id=b.pk, taken_at=b.started_at, verified=True, kind=b.kind)
         for b in Backup.objects.all()],
        retention.RetentionPolicy.from_settings(), now=now,
    )  # fmt: skip
    assert plan.reasons(pre_deploy[1].pk) == ("pre-deploy 2 of 2",)
    assert plan.reasons(pre_restore[0].pk) == ("pre-restore 1 of 1",)
    assert plan.reasons(imported[1].pk) == ("imported",)


def test_it_never_prunes_a_restore_s_safety_backup_while_the_restore_runs(
    env_storage: dict[str, Any], inventory: dict[str, Any], settings: Any
) -> None:
    settings.BACKUP_KEEP_PRE_RESTORE = 0
    environment, storage_row, now = env_storage["environment"], env_storage["storage"], env_storage["now"]
    make_backup(environment, storage_row, started_at=now - timedelta(minutes=1))
    safety = make_backup(environment, storage_row, kind="pre-restore", started_at=now - timedelta(minutes=2))
    # A copy into another environment's restore job names it (its lock is that other environment's).
    other = inventory["env_b"]
    job = other.jobs.create(
        kind="restore", organization=other.project.organization, lock_key=f"environment:{other.pk}",
        status="running", params={"backup_id": 0, "safety_backup_id": safety.pk},
    )  # fmt: skip
    assert prune(now).backups == []
    job.status = "succeeded"
    job.save(update_fields=["status"])
    assert prune(now).backups == [safety.pk]


def test_an_environment_without_backup_settings_stores_no_pre_deploy_backup(inventory: dict[str, Any]) -> None:
    class Nothing:
        environment = inventory["env_a"]

    assert hooks._after_snapshot.get("backups.pre_deploy") is store_pre_deploy_backup  # registered in ready()
    store_pre_deploy_backup(None, Nothing(), None)  # type: ignore[arg-type]
    assert not Backup.objects.exists()


def _running_backup(environment: Any, storage_row: Any) -> Backup:
    """A backup that has just started: its job runs and holds the environment, its row says running."""
    job = environment.jobs.create(
        kind="backup", organization=environment.project.organization, lock_key=f"environment:{environment.pk}",
        status="running",
    )  # fmt: skip
    return make_backup(environment, storage_row, status="running", started_at=timezone.now(), job=job)


def _sha1(content: bytes) -> str:
    return hashlib.sha1(content, usedforsecurity=False).hexdigest()


def _finish_backup(backup: Backup, storage_row: Any, contents: list[bytes], claimed: dict[str, Any]) -> None:
    """What the backup job does after its claim: list the claimed objects, upload the others, record it good."""
    objects = []
    for content in contents:
        obj = claimed.get(_sha1(content)) or store_file(storage_row, content)
        objects.append({"key": obj.key, "role": "filestore", "name": f"{obj.sha1[:2]}/{obj.sha1}", "size": obj.size,
                        "sha256": obj.sha256})  # fmt: skip
    Backup.objects.filter(pk=backup.pk).update(
        status="good", manifest={"format": 1, "objects": objects}, finished_at=timezone.now(),
        verified_at=timezone.now(),
    )  # fmt: skip


def test_a_backup_that_starts_while_retention_deletes_its_files_never_lists_a_deleted_one(
    env_storage: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment, storage_row, now, root = (env_storage[k] for k in ("environment", "storage", "now", "root"))
    shared = b"an attachment only the old backup lists, and the new backup will list again\n"
    make_backup(environment, storage_row, files=[b"today\n"], started_at=now - timedelta(hours=1))
    old = make_backup(environment, storage_row, files=[shared], started_at=now - timedelta(days=5), kind="pre-deploy")
    old_key = FilestoreObject.objects.get(sha1=_sha1(shared)).key

    # Retention stops inside its transaction, right after it decided which files go (it has checked that no
    # backup into the storage runs), until the backup below has tried to claim its files.
    decided, resume = threading.Event(), threading.Event()
    real = retention.files_to_delete

    def files_to_delete(*args: Any) -> set[str]:
        doomed = real(*args)
        decided.set()
        assert resume.wait(30)
        return doomed

    monkeypatch.setattr(retention, "files_to_delete", files_to_delete)
    reports: list[Any] = []

    def run_prune() -> None:
        try:
            reports.append(prune(now))
        finally:
            connection.close()

    pruning = threading.Thread(target=run_prune)
    pruning.start()
    assert decided.wait(30)
    # A backup starts now (its row says running) and claims the objects it would reuse.
    new = _running_backup(environment, storage_row)
    claims: list[dict[str, Any]] = []

    def claim() -> None:
        try:
            claims.append(claim_filestore_objects(storage_row.pk, [_sha1(shared)]))
        finally:
            connection.close()

    claiming = threading.Thread(target=claim)
    claiming.start()
    claiming.join(1.0)
    assert claiming.is_alive(), "the claim must wait for retention's lock"
    resume.set()
    pruning.join(30)
    claiming.join(30)
    assert reports[0].backups == [old.pk] and reports[0].filestore_objects == 1
    _finish_backup(new, storage_row, [shared, b"today\n"], claims[0])
    # Every file the good backup lists is in the storage, with the checksum it lists.
    new.refresh_from_db()
    storage = open_storage(storage_row)
    for entry in new.manifest["objects"]:
        assert (root / entry["key"]).is_file(), f"{entry['key']} is listed by good backup #{new.pk} but gone"
        with storage.reader(entry["key"]) as stream:
            assert hashlib.sha256(stream.read()).hexdigest() == entry["sha256"]
    assert (root / old_key).read_bytes() == shared
    assert claims == [{}]  # the row was gone by the time the claim got the lock: the file was uploaded again


def test_retention_deletes_no_file_of_a_storage_a_backup_has_claimed_from(
    env_storage: dict[str, Any], inventory: dict[str, Any]
) -> None:
    environment, storage_row, now, root = (env_storage[k] for k in ("environment", "storage", "now", "root"))
    shared = b"reused by a backup of staging that is running\n"
    make_backup(environment, storage_row, files=[b"today\n"], started_at=now - timedelta(hours=1))
    old = make_backup(environment, storage_row, files=[shared], started_at=now - timedelta(days=5), kind="pre-deploy")
    staging = environment.project.environments.create(
        server=inventory["server_a"], name="staging", compose_files=["s.yaml"], compose_project="shop-16-0-staging"
    )
    running = _running_backup(staging, storage_row)
    claimed = claim_filestore_objects(storage_row.pk, [_sha1(shared)])
    assert set(claimed) == {_sha1(shared)}
    report = prune(now, environments=[environment])
    assert report.backups == [old.pk] and report.filestore_objects == 0
    assert any("a backup into it is running" in error for error in report.errors)
    _finish_backup(running, storage_row, [shared], claimed)
    assert (root / claimed[_sha1(shared)].key).read_bytes() == shared
    # Once that backup is good it lists the file: the next run keeps it too.
    assert prune(now).filestore_objects == 0 and (root / claimed[_sha1(shared)].key).is_file()


def test_a_failing_hook_after_the_snapshot_never_fails_the_deploy_but_a_cancel_still_ends_it(
    inventory: dict[str, Any],
) -> None:
    from panel.jobs.runner import JobCanceled

    lines: list[str] = []

    class Context:
        write = lines.append

    class Pipeline:
        environment = inventory["env_a"]  # no backup settings: the pre-deploy hook does nothing

    class Deployment:
        pk = 7

    def broken(*_: Any) -> None:
        raise RuntimeError("the storage is on fire")

    def canceled(*_: Any) -> None:
        raise JobCanceled("Canceled on request.")

    try:
        hooks.register_after_snapshot("test.broken", broken)
        hooks.snapshot_taken(Context(), Pipeline(), Deployment())  # type: ignore[arg-type]
        assert lines == ["⚠ test.broken after the snapshot failed: the storage is on fire The deploy goes on."]
        hooks.register_after_snapshot("test.canceled", canceled)
        with pytest.raises(JobCanceled):
            hooks.snapshot_taken(Context(), Pipeline(), Deployment())  # type: ignore[arg-type]
    finally:
        hooks.unregister_after_snapshot("test.broken")
        hooks.unregister_after_snapshot("test.canceled")
    assert not Backup.objects.exists()
