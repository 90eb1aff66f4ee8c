"""Pre-deploy backups on the lab: production deploys of the sample project through a real worker, with backup
settings, into a local-directory storage.

- a storage that cannot be written fails the pre-deploy backup (recorded failed, an event), and the deploy goes on;
- with a working storage the deploy's own dump (not a second one) becomes a good pre-deploy backup, listed by the
  API with the deploy's job; the deploy's update then fails, and its automatic rollback still restores the database
  from the dump on the server.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from backups.models import Backup, BackupSettings
from monitoring.models import Event
from tests.backup_fixtures import make_local_storage
from tests.deploy_fixtures import deploy, health, installed_version, log_text
from tests.test_deploy_lab import bump_manifest, commit_update_that_never_gets_healthy

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def local_root() -> Any:
    """A directory under the worker's BACKUP_LOCAL_ROOTS (the worker is another process: its settings apply)."""
    root = Path(settings.BACKUP_LOCAL_ROOTS[0]) / f"test-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_production_deploy_stores_its_dump_as_a_good_pre_deploy_backup_and_still_rolls_back_from_it(
    deploy_env, lab1, lab_sample, local_root, users, client
) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    # The storage's directory is a file: nothing can be written there.
    store = local_root / "store"
    store.write_bytes(b"not a directory\n")
    storage_row = make_local_storage(deploy_env.project.organization, store)
    BackupSettings.objects.create(environment=deploy_env, storage=storage_row)

    bump_manifest(lab_sample, "16.0.1.1.0")
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "succeeded", second.job.reason + log_text(second)[-3000:]
    failed = Backup.objects.get(kind="pre-deploy", job=second.job)
    assert failed.status == "failed" and failed.reason and not failed.manifest
    assert "The deploy goes on: the dump on the server" in log_text(second)
    assert Event.objects.filter(deployment=second, kind="backup.pre_deploy_failed").exists()
    assert installed_version(lab1, "panel_demo") == "16.0.1.1.0"

    store.unlink()
    store.mkdir()
    commit_update_that_never_gets_healthy(lab_sample, "16.0.1.7.0")
    third = deploy(deploy_env, users["alice"])
    text = log_text(third)
    # The update failed and the rollback restored the database from the dump on the server, as without backups.
    assert third.job.status == "failed", text[-3000:]
    assert third.rollback == {"to": second.pk, "outcome": "succeeded", "database": "restored"}, text[-3000:]
    assert installed_version(lab1, "panel_demo") == "16.0.1.1.0"
    assert health(lab1) == {"status": "pass"}
    steps = [step["name"] for step in third.job.result["steps"]]
    assert steps.index("Snapshot database") < steps.index("Pre-deploy backup: Store the deploy's dump")
    assert steps.index("Pre-deploy backup: Write the manifest") < steps.index("Update database")
    assert "Dumping database" not in text and "it is not dumped again" in text  # one dump: the deploy's own

    backup = Backup.objects.get(kind="pre-deploy", job=third.job)
    assert backup.status == "good", backup.reason + text[-3000:]
    assert backup.finished_at and backup.verified_at
    manifest = backup.manifest
    # Its dump is the deploy's dump on the server, byte for byte.
    snapshot = (lab1.home / third.db_snapshot["path"]).read_bytes()
    (entry,) = [e for e in manifest["objects"] if e["role"] == "database"]
    assert entry["size"] == len(snapshot) == third.db_snapshot["bytes"] == backup.database_bytes
    assert entry["sha256"] == hashlib.sha256(snapshot).hexdigest()
    assert (store / entry["key"]).read_bytes() == snapshot
    assert manifest["snapshot"] == {"deployment": third.pk, "commit": third.commit,
                                    "path": third.db_snapshot["path"], "bytes": len(snapshot)}  # fmt: skip
    # What the dump holds: the database before the update, of the deployment that ran then.
    assert manifest["deployment"]["id"] == second.pk and manifest["modules"]["panel_demo"] == "16.0.1.1.0"
    assert manifest["dump"]["toc_entries"] > 0 and manifest["postgresql"]["pg_dump_version"].startswith("pg_dump")
    assert "filestore" in manifest and (store / manifest["manifest_object"]["key"]).is_file()

    client.force_login(users["alice"])
    listed = client.get(f"/api/v1/backups/?environment={deploy_env.pk}").json()["results"]
    assert [(b["id"], b["kind"], b["status"], b["job"]) for b in listed] == [
        (backup.pk, "pre-deploy", "good", third.job_id),
        (failed.pk, "pre-deploy", "failed", second.job_id),
    ]
