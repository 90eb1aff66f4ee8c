"""Verify: every object of a backup read back from a real storage (a local directory, plain and encrypted), its
size and SHA-256, each filestore file's SHA-1 and the dump through the panel host's real pg_restore --list; the job
in a real Celery worker sets verified_at, or clears it and says what is wrong."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from backups.models import Backup, BackupSettings
from backups.storage import open_storage
from backups.verify import start_verify, verify_objects
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy
from tests.backup_fixtures import make_local_storage
from tests.backup_rows import make_backup
from tests.lab_helpers import wait_job

FILES = [b"attachment one\n", secrets.token_bytes(300_000), b""]


@pytest.fixture
def local_root() -> Any:
    """A directory under the worker's BACKUP_LOCAL_ROOTS (the worker is another process: its settings apply)."""
    root = Path(settings.BACKUP_LOCAL_ROOTS[0]) / f"test-verify-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _backup(inventory: dict[str, Any], root: Path, **storage_fields: Any) -> Backup:
    environment = inventory["env_a"]
    storage_row = make_local_storage(environment.project.organization, root, **storage_fields)
    BackupSettings.objects.create(environment=environment, storage=storage_row)
    return make_backup(environment, storage_row, files=FILES, verified=False)


def _path(root: Path, key: str) -> Path:
    return root / key


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_it_reads_back_every_object_and_runs_pg_restore_list(
    inventory: dict[str, Any], local_root: Path, encrypt: bool
) -> None:
    backup = _backup(inventory, local_root, encrypt=encrypt)
    report = verify_objects(open_storage(backup.storage), backup.manifest)
    assert report.ok, report.problems
    assert report.objects == 1 + len(FILES) + 1  # dump, files, manifest
    assert report.files == len(FILES)
    assert report.pg_restore.startswith("accepted (")


def test_it_finds_an_altered_a_missing_and_a_misnamed_filestore_file(
    inventory: dict[str, Any], local_root: Path
) -> None:
    backup = _backup(inventory, local_root)
    storage = open_storage(backup.storage)
    files = [entry for entry in backup.manifest["objects"] if entry["role"] == "filestore"]
    altered, missing, misnamed = files
    # Same size, other bytes: only the checksum can tell.
    path = _path(local_root, altered["key"])
    path.write_bytes(b"ATTACHMENT ONE\n")
    _path(local_root, missing["key"]).unlink()
    # A file stored (and recorded) honestly, but under a name that is not its content's SHA-1.
    wrong = f"filestore/{misnamed['key'].split('/')[1]}/{misnamed['key'].split('/')[1]}" + "0" * 38
    stored = storage.put_bytes(wrong, b"not what the name says")
    backup.manifest["objects"].append({"key": wrong, "role": "filestore", "size": stored.size, "sha256": stored.sha256})
    report = verify_objects(storage, backup.manifest)
    assert not report.ok
    text = "\n".join(report.problems)
    assert altered["key"] in text and "SHA-256" in text
    assert missing["key"] in text
    assert wrong in text and "SHA-1" in text
    assert len(report.problems) == 3
    assert report.pg_restore.startswith("accepted")  # the dump itself is fine


def test_it_fails_a_dump_that_pg_restore_refuses_even_with_the_right_checksum(
    inventory: dict[str, Any], local_root: Path
) -> None:
    environment = inventory["env_a"]
    storage_row = make_local_storage(environment.project.organization, local_root)
    backup = make_backup(environment, storage_row, dump=b"PGDMP" + secrets.token_bytes(5000))
    report = verify_objects(open_storage(storage_row), backup.manifest)
    assert [problem for problem in report.problems if "pg_restore --list refused the dump" in problem]
    assert report.pg_restore.startswith("refused")


def test_it_says_when_the_panel_host_cannot_run_pg_restore(
    inventory: dict[str, Any], local_root: Path, settings: Any
) -> None:
    settings.BACKUP_VERIFY_PG_RESTORE = ""
    backup = _backup(inventory, local_root)
    report = verify_objects(open_storage(backup.storage), backup.manifest)
    assert report.ok
    assert report.pg_restore.startswith("skipped: the panel host has no pg_restore")
    # Without pg_restore the dump's bytes are still checked.
    dump = backup.manifest["objects"][0]
    raw = _path(local_root, dump["key"])
    data = bytearray(raw.read_bytes())
    data[-1] ^= 1
    raw.write_bytes(bytes(data))
    report = verify_objects(open_storage(backup.storage), backup.manifest)
    assert [problem for problem in report.problems if dump["key"] in problem and "SHA-256" in problem]


def test_it_verifies_only_good_backups_and_one_verify_at_a_time(inventory: dict[str, Any], local_root: Path) -> None:
    backup = _backup(inventory, local_root)
    failed = make_backup(inventory["env_a"], backup.storage, status="failed")
    with pytest.raises(JobFailed, match="only good backups"):
        start_verify(failed, None)
    job = start_verify(backup, None)
    assert job.kind == "verify" and job.params == {"backup_id": backup.pk}
    with pytest.raises(TargetBusy):
        start_verify(backup, None)


@pytest.mark.django_db(transaction=True)
def test_it_runs_verify_jobs_in_a_worker_setting_and_clearing_verified_at(
    jobs_worker: Any, inventory: dict[str, Any], local_root: Path, users: dict[str, Any]
) -> None:
    backup = _backup(inventory, local_root, encrypt=True)
    job = wait_job(start_verify(backup, users["alice"]), timeout=60)
    assert job.status == "succeeded", job.reason
    assert job.result["verified"] is True and job.result["pg_restore"].startswith("accepted")
    backup.refresh_from_db()
    assert backup.verified_at is not None

    # A stored object altered afterwards fails Verify: the backup stops counting as verified, and says why.
    entry = next(entry for entry in backup.manifest["objects"] if entry["role"] == "filestore" and entry["size"] > 1000)
    raw = _path(local_root, entry["key"])
    data = bytearray(raw.read_bytes())
    data[len(data) // 2] ^= 0xFF
    raw.write_bytes(bytes(data))
    job = wait_job(start_verify(backup, users["alice"]), timeout=60)
    assert job.status == "failed"
    assert f"Backup #{backup.pk} failed verification: 1 problem: {entry['key']}" in job.reason
    backup.refresh_from_db()
    assert backup.verified_at is None
    assert backup.status == "good"  # the backup job's own outcome is unchanged (see the README on Verify)
    assert entry["key"] in backup.reason and backup.reason.startswith(f"Verify #{job.pk}")
