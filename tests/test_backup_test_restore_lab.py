"""Test restores against the lab: the sample environment deployed on lab1 (real PostgreSQL container, Odoo
stand-in), backed up, then test-restored by a real worker as a throwaway compose project on lab1.

- a good backup passes (``/web/health`` and ``base``'s version on the copy), the copy is removed (no container,
  volume, network or directory of it is left), and the environment's containers, database and filestore are
  untouched; on lab2, which lacks the environment's images, it is refused saying so;
- a stored object altered afterwards fails Verify (``verify_status`` failed, with the reason) and fails its test
  restore: never recorded passed, and nothing left behind either;
- the worker killed in the middle of a test restore leaves no container, volume, network, directory or process of
  it on the server, and the backup says the test restore failed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from backups.models import Backup, BackupSettings
from backups.services import settle_backups
from backups.testrestore import start_test_restore, throwaway_project
from backups.verify import start_verify
from panel.jobs.models import Job
from tests.deploy_fixtures import KEY, health
from tests.lab_helpers import add_lab_server, wait_job
from tests.test_backup_lab import content_named, deployed, run_backup_of
from tests.test_job_faults_lab import tagged_processes, wait_for_line
from tests.test_restore_lab import attach, dump_hash, filestore_hashes, job_log, setup_backups, sql

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

__all__ = ["deployed"]  # a fixture

LEFT_SCRIPT = (
    "docker ps -a --format 'container {{.Names}}'; docker volume ls --format 'volume {{.Name}}'; "
    "docker network ls --format 'network {{.Name}}'; ls -1A ~/doodba-panel/.test-restores 2>/dev/null | sed 's/^/dir /'; "
    "ps -eo args | grep -F panel-test-restore- | grep -v grep | sed 's/^/process /'; true"
)


def leftovers(host: Any, job: Job) -> list[str]:
    """What of the job's throwaway project is on the host: containers, volumes, networks, its directory, processes."""
    project = throwaway_project(job.pk)
    lines = host.ssh("sh", "-c", LEFT_SCRIPT, check=True).stdout.splitlines()
    return [line for line in lines if project in line] + [f"tagged {pid}" for pid in tagged_processes(host, job)]


def wait_nothing_left(host: Any, job: Job, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (left := leftovers(host, job)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


def environment_containers(host: Any) -> dict[str, str]:
    """The environment's containers: name → id and start time (a restarted one would differ)."""
    script = (
        f"docker ps -a -q --filter label=com.docker.compose.project={KEY} | "
        "xargs docker inspect --format '{{.Name}} {{.Id}} {{.State.StartedAt}} {{.State.Status}}'"
    )
    lines = host.ssh("sh", "-c", script, check=True).stdout.splitlines()
    return {line.split()[0]: line for line in lines if line.strip()}


def run_test_restore_of(backup: Backup, actor: Any, timeout: float = 240, **kwargs: Any) -> Job:
    job = wait_job(start_test_restore(backup, actor, **kwargs), timeout=timeout)
    backup.refresh_from_db()
    return job


def test_it_test_restores_a_good_backup_aside_and_fails_one_whose_stored_object_was_altered(
    deployed, jobs_worker, lab1, lab2, users
) -> None:
    setup_backups(deployed)
    sql(lab1, "CREATE TABLE notes AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 2000) g")
    files = {content_named(data): data for data in (os.urandom(150_000), os.urandom(2000))}
    attach(lab1, files)
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    before = (dump_hash(lab1), filestore_hashes(lab1), environment_containers(lab1))

    job = run_test_restore_of(backup, users["alice"])
    log = job_log(job)
    assert job.status == "succeeded", job.reason + "\n" + log[-3000:]
    assert backup.test_restore_status == "passed" and backup.test_restore_job_id == job.pk, backup.test_restore_reason
    assert backup.test_restored_at is not None and backup.test_restore_reason == ""
    assert job.result["base_version"] == backup.manifest["odoo"]["base_version"]
    assert "pg_restore exited 0" in log and "all 3 attachments the database references" in log  # the sample's + 2
    assert "The copy's Odoo answers /web/health" in log and f"base is at {job.result['base_version']}" in log
    assert "Neutralized prod with odoo neutralize" in log
    # Nothing of the copy is left; the environment's containers, database and filestore are as they were.
    wait_nothing_left(lab1, job)
    assert (dump_hash(lab1), filestore_hashes(lab1), environment_containers(lab1)) == before
    assert health(lab1)["status"] == "pass"

    # lab2 has none of the environment's images: refused, saying which, and the backup records it failed.
    lab2_server = add_lab_server(deployed.server.organization, users["alice"], lab2)
    BackupSettings.objects.filter(environment=deployed).update(test_restore_server=lab2_server)
    refused = run_test_restore_of(backup, users["alice"], timeout=120)
    assert refused.status == "failed" and "does not have the images the copy needs" in refused.reason, refused.reason
    assert f"{KEY}-odoo:panel-{deployed.current_deployment_id}" in refused.reason
    assert backup.test_restore_status == "failed" and "never builds or pulls" in backup.test_restore_reason
    wait_nothing_left(lab2, refused)
    BackupSettings.objects.filter(environment=deployed).update(test_restore_server=None)

    # One stored filestore object changes behind the panel's back (same size): Verify fails, and so does the test
    # restore; it is never recorded passed.
    entry = next(e for e in backup.manifest["objects"] if e["role"] == "filestore" and e["size"] > 100_000)
    path = os.path.join(backup.storage.path, backup.storage.prefix, entry["key"])
    with open(path, "r+b") as stored:
        stored.seek(entry["size"] // 2)
        byte = stored.read(1)
        stored.seek(entry["size"] // 2)
        stored.write(bytes([byte[0] ^ 0x01]))
    verify = wait_job(start_verify(backup, users["alice"]), timeout=120)
    backup.refresh_from_db()
    assert verify.status == "failed"
    assert backup.verify_status == "failed" and entry["key"] in backup.verify_reason and backup.verified_at is None
    broken = run_test_restore_of(backup, users["alice"])
    assert broken.status == "failed", job_log(broken)[-3000:]
    assert backup.test_restore_status == "failed" and backup.test_restore_job_id == broken.pk
    assert "SHA-256" in backup.test_restore_reason or "not what its name says" in backup.test_restore_reason, (
        backup.test_restore_reason
    )
    assert "The copy's Odoo answers /web/health" not in job_log(broken)
    wait_nothing_left(lab1, broken)
    assert (dump_hash(lab1), filestore_hashes(lab1), environment_containers(lab1)) == before


def test_it_leaves_nothing_running_when_the_worker_dies_during_a_test_restore(
    deployed, jobs_worker, monitoring_worker, lab1, users
) -> None:
    setup_backups(deployed)
    sql(lab1, "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) AS t "
              "FROM generate_series(1, 400000) g")  # fmt: skip
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    before = environment_containers(lab1)
    job = start_test_restore(backup, users["alice"])
    wait_for_line(job, r"^Restoring the dump")
    # The copy's db container runs now (and a pg_restore in it).
    assert [line for line in leftovers(lab1, job) if line.startswith("container")], leftovers(lab1, job)
    jobs_worker.kill()
    job = wait_job(job, timeout=90, statuses=("interrupted",))
    wait_nothing_left(lab1, job)
    settle_backups(deployed)
    backup.refresh_from_db()
    assert backup.test_restore_status == "failed" and f"Test restore #{job.pk} ended interrupted" in (
        backup.test_restore_reason
    )
    assert environment_containers(lab1) == before and health(lab1)["status"] == "pass"
