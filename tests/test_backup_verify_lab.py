"""Verify against a real backup: the sample environment deployed on lab1 is backed up by a real worker into a local
directory, then verified by a real worker (the dump through this host's pg_restore --list). A stored object altered
afterwards fails Verify and the backup stops counting as verified; put back, it verifies again."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from backups.models import BackupSettings
from backups.services import start_backup
from backups.verify import start_verify
from tests.backup_fixtures import make_local_storage
from tests.deploy_fixtures import KEY, deploy
from tests.lab_helpers import wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

ODOO = f"{KEY}-odoo-1"
FILESTORE = "/var/lib/odoo/filestore/prod"


@pytest.fixture
def local_root() -> Any:
    """A directory under the worker's BACKUP_LOCAL_ROOTS (the worker is another process: its settings apply)."""
    root = Path(settings.BACKUP_LOCAL_ROOTS[0]) / f"test-verify-lab-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _add_file(host: Any, data: bytes) -> str:
    sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    name = f"{sha1[:2]}/{sha1}"
    script = f"mkdir -p {FILESTORE}/{sha1[:2]} && cat > {FILESTORE}/{name}"
    argv = host.ssh_argv("docker", "exec", "-i", "-u", "odoo", ODOO, "sh", "-c", script)
    proc = subprocess.run(argv, input=data, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return name


def test_it_verifies_a_real_backup_and_fails_it_once_an_object_is_altered(
    deploy_env: Any, jobs_worker: Any, lab1: Any, local_root: Path, users: dict[str, Any]
) -> None:
    deployment = deploy(deploy_env, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason
    deploy_env.refresh_from_db()
    storage_row = make_local_storage(deploy_env.project.organization, local_root, encrypt=True)
    BackupSettings.objects.create(environment=deploy_env, storage=storage_row)
    _add_file(lab1, os.urandom(200_000))
    backup = start_backup(environment=deploy_env, actor=users["alice"])
    job = wait_job(backup.job, timeout=180)
    assert job.status == "succeeded", job.reason
    backup.refresh_from_db()

    job = wait_job(start_verify(backup, users["alice"]), timeout=120)
    assert job.status == "succeeded", job.reason
    assert job.result["pg_restore"].startswith("accepted (") and job.result["filestore_files"] >= 1
    backup.refresh_from_db()
    verified_at = backup.verified_at
    assert verified_at is not None

    # One byte of the stored dump changes behind the panel's back (same size).
    dump = next(entry for entry in backup.manifest["objects"] if entry["role"] == "database")
    path = local_root / dump["key"]
    original = path.read_bytes()
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0x01
    path.write_bytes(bytes(altered))
    job = wait_job(start_verify(backup, users["alice"]), timeout=120)
    assert job.status == "failed" and dump["key"] in job.reason
    backup.refresh_from_db()
    assert backup.verified_at is None and backup.reason.startswith(f"Verify #{job.pk}")

    path.write_bytes(original)
    job = wait_job(start_verify(backup, users["alice"]), timeout=120)
    assert job.status == "succeeded", job.reason
    backup.refresh_from_db()
    assert backup.verified_at is not None and backup.verified_at > verified_at and backup.reason == ""
