"""The restore job against the lab: a deployed sample environment on lab1 (real PostgreSQL container, Odoo stand-in),
backed up by the backup job and restored by a real worker.

- round trip: rows and files written after a backup are gone after restoring it, those from before are back
  byte-identical (a pg_dump's hash, every filestore file's hash); the original is kept as ``prod_before_<job>``;
- a restore into a new environment deploys it first, then restores, neutralized, with a new uuid and its own base
  URL (copy production to staging is in ``tests/test_backup_browser_lab.py``, from the page);
- a backup of another Odoo major version is refused before the job starts, a dump newer than the target's
  pg_restore in the job's first step, both with nothing changed;
- the worker killed during the database restore: the original keeps serving its data, the environment does not
  need attention, and the next restore removes what the killed one left aside.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import pytest

from backups.models import Backup, BackupSettings
from backups.restore import RestoreRefused, start_restore
from panel.inventory.choices import EnvironmentState
from panel.inventory.models import Environment
from panel.inventory.services import environment_state
from panel.jobs.models import Job, JobLogLine
from tests.backup_fixtures import make_local_storage
from tests.deploy_fixtures import KEY, health
from tests.lab_helpers import wait_job
from tests.test_backup_lab import DB, FILESTORE, ODOO, add_files, content_named, deployed, run_backup_of
from tests.test_job_faults_lab import wait_for_line

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

__all__ = ["deployed"]  # a fixture


def sql(host: Any, query: str, database: str = "prod") -> str:
    result = host.ssh("docker", "exec", DB, "psql", "-U", "odoo", "-d", database, "-v", "ON_ERROR_STOP=1",
                      "-tAc", query, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def dump_hash(host: Any, database: str = "prod") -> str:
    """SHA-256 of a plain pg_dump (without pg_dump's per-run \\restrict key)."""
    result = host.ssh("docker", "exec", DB, "pg_dump", "-U", "odoo", "--no-owner", "-d", database, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def filestore_hashes(host: Any) -> dict[str, str]:
    script = f"cd {FILESTORE} && find . -type f -exec sha256sum {{}} +"
    result = host.ssh("docker", "exec", ODOO, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    return {line.split()[1]: line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def attach(host: Any, files: dict[str, bytes]) -> None:
    """Files in the filestore with the ir_attachment rows that reference them."""
    add_files(host, files)
    values = ", ".join(f"('{name}', '{name}', {len(data)})" for name, data in files.items())
    sql(host, f"INSERT INTO ir_attachment (name, store_fname, file_size) VALUES {values}")


def wait_for_client(host: Any, application: str, database: str = "prod", timeout: float = 90) -> None:
    """Until a client (``application_name``) is busy on ``database`` of the environment's PostgreSQL."""
    query = (
        f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}' "
        f"AND datname = '{database}' AND state = 'active'"
    )
    deadline = time.monotonic() + timeout
    while sql(host, query, database="postgres") == "0":
        assert time.monotonic() < deadline, f"{application} never worked on {database}"
        time.sleep(0.05)


def restore(backup: Backup, target: Environment, actor: Any, timeout: float = 120) -> Job:
    job = start_restore(backup=backup, target=target, actor=actor)
    wait_job(job, timeout=timeout)
    job.refresh_from_db()
    return job


def job_log(job: Job) -> str:
    return "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))


def setup_backups(environment: Environment) -> None:
    from pathlib import Path

    from django.conf import settings

    root = Path(settings.BACKUP_LOCAL_ROOTS[0]) / f"restore-{os.getpid()}-{time.monotonic_ns()}"
    root.mkdir(parents=True)
    BackupSettings.objects.create(
        environment=environment, storage=make_local_storage(environment.project.organization, root)
    )


def test_it_restores_a_backup_byte_identical_and_drops_what_came_after(deployed, jobs_worker, lab1, users) -> None:
    setup_backups(deployed)
    sql(lab1, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    sql(lab1, "INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 500) g")
    before_files = {content_named(data): data for data in (os.urandom(200_000), os.urandom(3000))}
    attach(lab1, before_files)
    add_files(lab1, {"checklist/notes.txt": b"not named by its content"})
    expected_dump, expected_files = dump_hash(lab1), filestore_hashes(lab1)
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    # Written after the backup: gone after the restore.
    sql(lab1, "INSERT INTO notes VALUES (9999, 'after the backup')")
    sql(lab1, "UPDATE notes SET body = 'changed' WHERE id = 1")
    late = os.urandom(5000)
    attach(lab1, {content_named(late): late})
    assert dump_hash(lab1) != expected_dump
    job = restore(backup, deployed, users["alice"])
    assert job.status == "succeeded", job.reason + "\n" + job_log(job)[-3000:]
    assert dump_hash(lab1) == expected_dump
    assert filestore_hashes(lab1) == expected_files
    assert sql(lab1, "SELECT count(*) FROM notes WHERE id = 9999") == "0"
    assert health(lab1)["status"] == "pass"
    # The original is kept aside, with what was written after the backup; production is not neutralized.
    assert sql(lab1, "SELECT body FROM notes WHERE id = 9999", database=f"prod_before_{job.pk}") == "after the backup"
    assert sql(lab1, "SELECT count(*) FROM ir_config_parameter WHERE key = 'database.is_neutralized'") == "0"
    assert job.result["safety_backup"] and Backup.objects.get(pk=job.result["safety_backup"]).status == "good"
    log = job_log(job)
    assert "pg_restore exited 0" in log and "all 3 attachments the database references" in log
    deployed.refresh_from_db()
    assert not environment_state(deployed).alarming


def test_it_restores_into_a_new_environment_deployed_first_and_neutralized(deployed, jobs_worker, lab1, users) -> None:
    from backups.restore import restore_into_new_environment

    setup_backups(deployed)
    sql(lab1, "CREATE TABLE orders (id int PRIMARY KEY, customer text)")
    sql(lab1, "INSERT INTO orders SELECT g, 'customer ' || g FROM generate_series(1, 120) g")
    sql(lab1, "INSERT INTO ir_config_parameter (key, value) VALUES ('database.uuid', 'prod-uuid') "
              "ON CONFLICT (key) DO UPDATE SET value = 'prod-uuid'")  # fmt: skip
    document = os.urandom(7000)
    attach(lab1, {content_named(document): document})
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    key = "panel-demo-16-0-recovered"
    lab1.docker("compose", "-p", key, "down", "-v", "--remove-orphans", timeout=300)
    try:
        job = restore_into_new_environment(
            backup=backup, actor=users["alice"], name="recovered", kind="test", server=deployed.server,
            compose_files=["test.yaml"], git_ref="main", domain="recovered.panel-demo.example.com",
        )  # fmt: skip
        wait_job(job, timeout=400)
        job.refresh_from_db()
        assert job.status == "succeeded", job.reason + "\n" + job_log(job)[-3000:]
        target = Environment.objects.get(pk=job.environment_id)
        assert target.compose_project == key and target.current_deployment is not None
        assert target.current_deployment.job_id == job.pk  # deployed by the restore job itself
        log = job_log(job)
        assert "is new: no safety backup" in log and job.result["safety_backup"] is None

        def new_sql(query: str) -> str:
            result = lab1.ssh("docker", "exec", f"{key}-db-1", "psql", "-U", "odoo", "-d", "prod", "-tAc", query)
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

        # Production's data, neutralized, with its own uuid and base URL; production itself untouched.
        assert new_sql("SELECT count(*) FROM orders") == "120"
        assert new_sql("SELECT count(*) FROM ir_mail_server WHERE active AND smtp_host <> 'invalid'") == "0"
        assert new_sql("SELECT string_agg(name, ',') FROM ir_cron WHERE active") == "Base: Auto-vacuum internal data"
        params = dict(line.split("|", 1) for line in new_sql("SELECT key, value FROM ir_config_parameter").splitlines())
        assert params["database.is_neutralized"] == "true"
        assert params["database.uuid"] not in ("", "prod-uuid") and len(params["database.secret"]) == 64
        assert params["web.base.url"] == "https://recovered.panel-demo.example.com"
        assert job.result["neutralized"] is True and "odoo neutralize" in log
        result = lab1.ssh("docker", "exec", f"{key}-odoo-1", "sha256sum", f"{FILESTORE}/{content_named(document)}")
        assert result.stdout.split()[0] == hashlib.sha256(document).hexdigest()
        health = lab1.ssh("docker", "exec", f"{key}-odoo-1", "curl", "-fsS", "http://localhost:8069/web/health")
        assert '"pass"' in health.stdout
        assert sql(lab1, "SELECT count(*) FROM ir_config_parameter WHERE key = 'database.is_neutralized'") == "0"
        assert not environment_state(target).alarming
    finally:
        lab1.docker("compose", "-p", key, "down", "-v", "--remove-orphans", timeout=300)


def test_it_refuses_another_odoo_version_and_a_newer_pg_dump(deployed, jobs_worker, lab1, users) -> None:
    setup_backups(deployed)
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    manifest = backup.manifest
    Backup.objects.filter(pk=backup.pk).update(
        manifest={**manifest, "odoo": {**manifest["odoo"], "image_version": "15.0"}}
    )
    with pytest.raises(RestoreRefused, match=r"is of Odoo 15\.0, and .* runs Odoo 16\.0"):
        start_restore(backup=Backup.objects.get(pk=backup.pk), target=deployed, actor=users["alice"])
    assert not Job.objects.filter(kind="restore").exists()
    newer = {**manifest["postgresql"], "pg_dump_major": 99, "pg_dump_version": "pg_dump (PostgreSQL) 99.0"}
    Backup.objects.filter(pk=backup.pk).update(manifest={**manifest, "postgresql": newer})
    backups_before = Backup.objects.count()
    job = restore(Backup.objects.get(pk=backup.pk), deployed, users["alice"])
    assert job.status == "failed"
    assert "pg_dump (PostgreSQL) 99.0, newer than the target's pg_restore (PostgreSQL) 15" in job.reason, job.reason
    assert "Nothing was changed" in job.reason
    assert Backup.objects.count() == backups_before  # refused before the safety backup
    assert sql(lab1, "SELECT count(*) FROM pg_database WHERE datname LIKE 'prod\\_%'", database="postgres") == "0"


def test_it_keeps_the_original_serving_when_the_worker_dies_during_the_database_restore(
    deployed, jobs_worker, monitoring_worker, lab1, users
) -> None:
    setup_backups(deployed)
    fill = (
        "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || "
        "md5(random()::text) AS t FROM generate_series(1, 800000) g"
    )
    sql(lab1, fill)
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    sql(lab1, "CREATE TABLE marker AS SELECT 'written after the backup' AS what")
    expected = dump_hash(lab1)
    job = start_restore(backup=backup, target=deployed, actor=users["alice"])
    # Killed while pg_restore writes into the copy aside (seen in the server's activity, not in the job's log,
    # whose lines arrive in batches).
    wait_for_client(lab1, "pg_restore", f"prod_restore_{job.pk}")
    jobs_worker.kill()
    job = wait_job(job, timeout=60, statuses=("interrupted",))
    assert "pg_restore exited 0" not in job_log(job), "the worker was killed after the database restore"
    # The original keeps serving its data, untouched; nothing says the environment needs attention.
    assert health(lab1)["status"] == "pass"
    assert sql(lab1, "SELECT what FROM marker") == "written after the backup"
    assert dump_hash(lab1) == expected
    deployed.refresh_from_db()
    assert not environment_state(deployed).alarming
    # What the killed job left aside is removed by the next restore, which then succeeds.
    jobs_worker.start()
    again = restore(backup, deployed, users["alice"], timeout=150)
    assert again.status == "succeeded", again.reason + "\n" + job_log(again)[-3000:]
    assert f"Dropped prod_restore_{job.pk}" in job_log(again)
    assert sql(lab1, "SELECT count(*) FROM pg_tables WHERE tablename = 'marker'") == "0"


def test_it_swaps_back_when_the_worker_dies_during_the_swap_and_says_the_environment_needs_attention(
    deployed, jobs_worker, monitoring_worker, lab1, users
) -> None:
    setup_backups(deployed)
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    sql(lab1, "CREATE TABLE marker AS SELECT 'written after the backup' AS what")
    late = os.urandom(4000)
    attach(lab1, {content_named(late): late})
    expected_dump, expected_files = dump_hash(lab1), filestore_hashes(lab1)
    job = start_restore(backup=backup, target=deployed, actor=users["alice"])
    wait_for_line(job, r"^Swapped the filestore")
    jobs_worker.kill()
    job = wait_job(job, timeout=60, statuses=("interrupted",))
    # The swap's undo runs on without the job, once the hold is gone, and puts the original back.
    undo_log = lab1.home / "doodba-panel" / KEY / f"restore-{job.pk}-undo.log"
    deadline = time.monotonic() + 60
    while "Undone" not in (undo_log.read_text() if undo_log.exists() else ""):
        assert time.monotonic() < deadline, undo_log.read_text() if undo_log.exists() else "no undo log"
        time.sleep(0.5)
    assert health(lab1)["status"] == "pass"
    assert sql(lab1, "SELECT what FROM marker") == "written after the backup"
    assert dump_hash(lab1) == expected_dump and filestore_hashes(lab1) == expected_files
    deployed.refresh_from_db()
    state = environment_state(deployed)
    assert state.code == EnvironmentState.NEEDS_ATTENTION and f"#{job.pk} did not finish cleanly" in state.detail, state
    jobs_worker.start()


def test_it_refuses_to_swap_in_a_copy_whose_attachments_are_missing(deployed, jobs_worker, lab1, users) -> None:
    setup_backups(deployed)
    present = os.urandom(2000)
    attach(lab1, {content_named(present): present})
    lost = content_named(b"a file the filestore lost")
    sql(lab1, f"INSERT INTO ir_attachment (name, store_fname, file_size) VALUES ('lost', '{lost}', 25)")
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    expected_dump, expected_files = dump_hash(lab1), filestore_hashes(lab1)
    job = restore(backup, deployed, users["alice"])
    assert job.status == "failed"
    assert f"1 attachments the restored database references are not in the restored filestore ({lost})" in job.reason
    assert "Nothing live was changed" in job.reason
    # The live database and filestore are as they were, and the copy aside is gone.
    assert dump_hash(lab1) == expected_dump and filestore_hashes(lab1) == expected_files
    assert sql(lab1, "SELECT count(*) FROM pg_database WHERE datname LIKE 'prod\\_%'", database="postgres") == "0"
    listing = lab1.ssh("docker", "exec", ODOO, "ls", "/var/lib/odoo/filestore").stdout.split()
    assert listing == ["prod"], listing
    assert health(lab1)["status"] == "pass"
    deployed.refresh_from_db()
    assert not environment_state(deployed).alarming


STAGING_KEY = "panel-demo-16-0-test"


@pytest.fixture
def staging(deployed: Environment, lab1: Any, users: dict[str, Any]) -> Any:
    """A staging environment of the same project on lab1 (test.yaml, its own db and odoo), deployed."""
    from panel.inventory.services import create_environment
    from tests.deploy_fixtures import deploy

    lab1.docker("compose", "-p", STAGING_KEY, "down", "-v", "--remove-orphans", timeout=300)
    environment = create_environment(
        project=deployed.project, server=deployed.server, actor=users["alice"], name="test", kind="staging",
        compose_files=["test.yaml"], git_ref="main",
    )  # fmt: skip
    Environment.objects.filter(pk=environment.pk).update(domain="test.panel-demo.example.com")
    environment.refresh_from_db()
    assert environment.compose_project == STAGING_KEY
    deployment = deploy(environment, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason
    environment.refresh_from_db()
    yield environment
    lab1.docker("compose", "-p", STAGING_KEY, "down", "-v", "--remove-orphans", timeout=300)


def test_it_swaps_back_when_the_swap_fails_and_the_original_serves_again(deployed, jobs_worker, lab1, users) -> None:
    setup_backups(deployed)
    backup = run_backup_of(deployed, users["alice"])
    assert backup.status == "good", backup.reason
    sql(lab1, "CREATE TABLE marker AS SELECT 'written after the backup' AS what")
    expected_dump, expected_files = dump_hash(lab1), filestore_hashes(lab1)
    job = start_restore(backup=backup, target=deployed, actor=users["alice"])
    wait_for_line(job, r"^Restoring the dump")
    # Something in the way of the swap: the name the original filestore would be kept under is taken.
    blocker = f"/var/lib/odoo/filestore/prod_before_{job.pk}"
    made = lab1.ssh("docker", "exec", ODOO, "sh", "-c", f"mkdir {blocker} && echo kept > {blocker}/mine")
    assert made.returncode == 0, made.stderr
    job = wait_job(job, timeout=120)
    assert job.status == "failed"
    assert "swapping the filestore directories failed" in job.reason and "It was undone" in job.reason, job.reason
    log = job_log(job)
    assert "Stopped Odoo." in log and "Swapped back: the original prod and its filestore serve again." in log
    assert health(lab1)["status"] == "pass"
    assert dump_hash(lab1) == expected_dump and filestore_hashes(lab1) == expected_files
    assert lab1.ssh("docker", "exec", ODOO, "cat", f"{blocker}/mine").stdout == "kept\n"
    assert sql(lab1, f"SELECT count(*) FROM pg_database WHERE datname = 'prod_before_{job.pk}'", "postgres") == "0"
    deployed.refresh_from_db()
    assert not environment_state(deployed).alarming
