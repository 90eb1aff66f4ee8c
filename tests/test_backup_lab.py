"""The backup job against the lab: a deployed sample environment on lab1 (real PostgreSQL container, Odoo stand-in)
backed up by a real worker into a local directory and into moto's S3 server.

- a backup is good only with its dump accepted by ``pg_restore --list``; its manifest says what it holds and every
  object's SHA-256 matches what the storage holds;
- a second backup of an unchanged filestore uploads only its dump and manifest (bytes counted by a proxy);
- a file whose content does not match its SHA-1 name is not stored under that name, and is reported;
- a worker killed in the middle of the dump leaves the backup not good and nothing running on the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from backups.models import Backup, BackupSettings, FilestoreObject
from backups.services import settle_backups, start_backup
from backups.storage import open_storage
from panel.jobs.models import JobLogLine
from tests.backup_fixtures import CountingProxy, make_local_storage, make_s3_storage
from tests.deploy_fixtures import KEY, deploy
from tests.lab_helpers import wait_job
from tests.test_job_faults_lab import tagged_processes

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

ODOO = f"{KEY}-odoo-1"
DB = f"{KEY}-db-1"
FILESTORE = "/var/lib/odoo/filestore/prod"


@pytest.fixture
def local_root() -> Any:
    """A directory under the worker's BACKUP_LOCAL_ROOTS (the worker is another process: its settings apply)."""
    root = Path(settings.BACKUP_LOCAL_ROOTS[0]) / f"test-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def deployed(deploy_env: Any, users: dict[str, Any]) -> Any:
    deployment = deploy(deploy_env, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason
    deploy_env.refresh_from_db()
    return deploy_env


def add_files(host: Any, files: dict[str, bytes]) -> None:
    """Write files into the odoo container's filestore (as the odoo user, like Odoo does)."""
    for name, data in files.items():
        directory = os.path.dirname(f"{FILESTORE}/{name}")
        script = f"mkdir -p {directory} && cat > {FILESTORE}/{name}"
        argv = host.ssh_argv("docker", "exec", "-i", "-u", "odoo", ODOO, "sh", "-c", script)
        proc = subprocess.run(argv, input=data, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def content_named(data: bytes) -> str:
    sha1 = hashlib.sha1(data).hexdigest()
    return f"{sha1[:2]}/{sha1}"


def run_backup_of(environment: Any, actor: Any, timeout: float = 120) -> Backup:
    backup = start_backup(environment=environment, actor=actor)
    wait_job(backup.job, timeout=timeout)
    backup.refresh_from_db()
    backup.job.refresh_from_db()
    return backup


def job_log(backup: Backup) -> str:
    return "\n".join(JobLogLine.objects.filter(job=backup.job).values_list("text", flat=True))


def assert_good(backup: Backup, storage_row: Any, endpoint: Any = None) -> dict[str, Any]:
    assert backup.job.status == "succeeded", backup.job.reason + "\n" + job_log(backup)[-3000:]
    assert backup.status == "good" and backup.finished_at and backup.verified_at
    manifest = backup.manifest
    storage = open_storage(storage_row)
    with storage.reader(f"{backup.key_prefix}/manifest.json") as stream:
        stored = json.loads(stream.read())
    assert stored == {k: v for k, v in manifest.items() if k != "manifest_object"}
    assert manifest["database"] == "prod"
    assert manifest["odoo"]["image_version"] == "16.0" and manifest["odoo"]["base_version"].startswith("16.0")
    assert manifest["postgresql"]["server_version"].startswith("15")
    assert manifest["postgresql"]["pg_dump_version"].startswith("pg_dump (PostgreSQL) 15")
    assert manifest["deployment"]["commit"] == backup.environment.current_deployment.commit
    assert "base" in manifest["modules"] and "panel_demo" in manifest["modules"]
    assert manifest["dump"]["toc_entries"] > 0 and manifest["dump"]["compression"] == "--compress=6"
    assert manifest["started_at"] < manifest["finished_at"]
    # Every object is in the storage with the size and SHA-256 the manifest records.
    listed = {obj.key: obj for obj in storage.list("")}
    for entry in manifest["objects"]:
        assert listed[entry["key"]].size == entry["size"], entry
        assert hashlib.sha256(raw_bytes(storage_row, entry["key"], endpoint)).hexdigest() == entry["sha256"], entry
    roles = [entry["role"] for entry in manifest["objects"]]
    assert roles.count("database") == 1 and "filestore" in roles
    return manifest


def raw_bytes(storage_row: Any, key: str, endpoint: Any) -> bytes:
    """The object's stored bytes, read past the panel's storage layer (the directory, or boto3)."""
    if storage_row.kind == "local":
        return (Path(storage_row.path) / storage_row.prefix / key).read_bytes()
    return endpoint.client().get_object(Bucket=storage_row.bucket, Key=storage_row.prefix + key)["Body"].read()


def test_it_backs_up_database_and_filestore_as_one_verified_unit_locally(
    deployed, jobs_worker, lab1, local_root, users
) -> None:
    storage_row = make_local_storage(deployed.project.organization, local_root)
    BackupSettings.objects.create(environment=deployed, storage=storage_row)
    odd = b"not named by its content"
    named = os.urandom(300_000)
    add_files(lab1, {content_named(named): named, "checklist/notes.txt": odd})
    backup = run_backup_of(deployed, users["alice"])
    manifest = assert_good(backup, storage_row)
    files = {entry["name"]: entry for entry in manifest["objects"] if entry["role"] == "filestore"}
    assert content_named(named) in files and files[content_named(named)]["size"] == len(named)
    other = next(entry for entry in manifest["objects"] if entry["role"] == "filestore-other")
    assert other["files"] == [{"name": "checklist/notes.txt", "size": len(odd)}]
    assert manifest["filestore"]["mismatched"] == [] and manifest["filestore"]["uploaded"] == len(files)
    log = job_log(backup)
    assert "pg_restore --list accepts the dump" in log and "MB/s" in log
    assert backup.database_bytes > 0 and backup.filestore_bytes >= len(named) + len(odd)
    # Nothing of the backup is left running in the containers (pg_dump's stdin watcher included).
    for container in (DB, ODOO):
        script = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
        procs = lab1.ssh("docker", "exec", container, "sh", "-c", script).stdout
        assert not [line for line in procs.splitlines() if line.split()[:1] in (["cat"], ["pg_dump"], ["tar"])], procs
    # Any failed command fails the backup: with the db container stopped, nothing is recorded as good.
    lab1.docker("stop", DB, check=True)
    try:
        failed = run_backup_of(deployed, users["alice"])
    finally:
        lab1.docker("start", DB, check=True)
    assert failed.job.status == "failed" and failed.status == "failed", failed.job.reason
    assert "failed (exit code" in failed.reason and failed.manifest == {}
    assert list(Backup.objects.filter(status="good")) == [backup]


def test_it_uploads_only_the_dump_and_the_manifest_for_an_unchanged_filestore(
    deployed, jobs_worker, lab1, moto_s3, users
) -> None:
    bucket = "backups-" + secrets.token_hex(6)
    moto_s3.client().create_bucket(Bucket=bucket)
    proxy = CountingProxy(moto_s3)
    try:
        storage_row = make_s3_storage(deployed.project.organization, proxy.endpoint, bucket)
        BackupSettings.objects.create(environment=deployed, storage=storage_row)
        payload = {}
        for _ in range(8):
            data = os.urandom(256 * 1024)
            payload[content_named(data)] = data
        add_files(lab1, payload)
        first = run_backup_of(deployed, users["alice"])
        assert_good(first, storage_row, moto_s3)
        first_sent = proxy.sent
        assert first_sent > 8 * 256 * 1024
        proxy.reset()
        second = run_backup_of(deployed, users["alice"])
        manifest = assert_good(second, storage_row, moto_s3)
        assert manifest["filestore"]["uploaded"] == 0 and manifest["filestore"]["reused"] >= 8
        written = second.uploaded_bytes
        dump = next(entry for entry in manifest["objects"] if entry["role"] == "database")
        assert written == dump["size"] + manifest["manifest_object"]["size"]
        # What reached the S3 server: the dump, the manifest and the HTTP around them, none of the 2 MiB of files.
        assert proxy.sent < written + 64 * 1024, (proxy.sent, written)
        first_keys = {e["key"] for e in first.manifest["objects"] if e["role"] == "filestore"}
        assert first_keys == {e["key"] for e in manifest["objects"] if e["role"] == "filestore"}
        assert FilestoreObject.objects.filter(storage=storage_row).count() == len(first_keys)
    finally:
        proxy.close()


def test_it_refuses_a_file_whose_content_does_not_match_its_name(
    deployed, jobs_worker, lab1, local_root, users
) -> None:
    # An encrypting storage: the dump is checked through decryption, the manifest has both checksums.
    storage_row = make_local_storage(deployed.project.organization, local_root, encrypt=True)
    BackupSettings.objects.create(environment=deployed, storage=storage_row)
    genuine = os.urandom(1000)
    liar = content_named(b"what the name promises")
    add_files(lab1, {liar: b"something else entirely", content_named(genuine): genuine})
    backup = run_backup_of(deployed, users["alice"])
    manifest = assert_good(backup, storage_row)
    assert manifest["filestore"]["mismatched"] == [{"name": liar, "size": len(b"something else entirely")}]
    assert liar not in {e["name"] for e in manifest["objects"] if e["role"] == "filestore"}
    sha1 = liar.split("/")[1]
    assert not FilestoreObject.objects.filter(sha1=sha1).exists()
    assert not (local_root / "filestore" / liar).exists()
    kept = next(e for e in manifest["objects"] if e["role"] == "filestore-mismatched")
    assert kept["files"] == manifest["filestore"]["mismatched"]
    assert f"{liar}: its content does not match its name" in job_log(backup)
    stored = next(e for e in manifest["objects"] if e.get("name") == content_named(genuine))
    assert stored["encrypted"] and stored["plain_size"] == len(genuine)
    assert stored["plain_sha256"] == hashlib.sha256(genuine).hexdigest() != stored["sha256"]
    assert genuine not in raw_bytes(storage_row, stored["key"], None)


def test_it_never_records_a_backup_whose_worker_was_killed_mid_dump_as_good(
    deployed, jobs_worker, monitoring_worker, lab1, local_root, users
) -> None:
    storage_row = make_local_storage(deployed.project.organization, local_root)
    BackupSettings.objects.create(environment=deployed, storage=storage_row)
    # Enough incompressible rows that the dump takes a while.
    fill = (
        "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || "
        "md5(random()::text) AS t FROM generate_series(1, 1500000) g"
    )
    result = lab1.ssh("docker", "exec", DB, "psql", "-U", "odoo", "-d", "prod", "-qc", fill, timeout=300)
    assert result.returncode == 0, result.stderr
    backup = start_backup(environment=deployed, actor=users["alice"])
    # Killed while pg_dump reads the database (the server's activity says so; the job's log arrives in batches).
    deadline = time.monotonic() + 60
    active = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND state = 'active'"
    while lab1.ssh("docker", "exec", DB, "psql", "-U", "odoo", "-d", "prod", "-tAc", active).stdout.strip() == "0":
        assert time.monotonic() < deadline, "pg_dump never ran"
        time.sleep(0.05)
    jobs_worker.kill()
    job = wait_job(backup.job, timeout=60, statuses=("interrupted",))
    settle_backups()
    backup.refresh_from_db()
    assert backup.status == "interrupted", backup.status
    assert f"#{job.pk}" in backup.reason
    assert tagged_processes(lab1, job) == []
    # pg_dump in the db container ended with the connection (docker would have left it running).
    deadline = time.monotonic() + 20
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'"
    while True:
        dumps = lab1.ssh("docker", "exec", DB, "psql", "-U", "odoo", "-d", "prod", "-tAc", sql).stdout.strip()
        if dumps == "0" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert dumps == "0", "pg_dump kept running in the db container"
    assert [obj.key for obj in open_storage(storage_row).list(backup.key_prefix + "/")] == []
    assert not JobLogLine.objects.filter(job=job, text__startswith="Dumped and stored").exists(), "killed too late"
    jobs_worker.start()


def test_it_ends_a_pg_dump_that_waits_for_a_lock_when_the_worker_dies(
    deployed, jobs_worker, monitoring_worker, lab1, local_root, users
) -> None:
    """pg_dump blocked on a table lock writes nothing, so nothing would ever tell it that its reader went away:
    docker keeps an exec running after its client left. The job's watcher ends it with the connection."""
    storage_row = make_local_storage(deployed.project.organization, local_root)
    BackupSettings.objects.create(environment=deployed, storage=storage_row)
    psql = ["docker", "exec", "-i", DB, "psql", "-U", "odoo", "-d", "prod", "-q"]
    assert lab1.ssh(*psql, "-c", "CREATE TABLE locked_here (x int)").returncode == 0
    holder = subprocess.Popen(
        lab1.ssh_argv(*psql, "-c", "BEGIN; LOCK TABLE locked_here IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(90);"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'"
    dumps = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'"

    def count(sql: str) -> str:
        return lab1.ssh(*psql, "-tAc", sql).stdout.strip()

    try:
        backup = start_backup(environment=deployed, actor=users["alice"])
        deadline = time.monotonic() + 60
        while count(waiting) != "1":
            assert time.monotonic() < deadline, "pg_dump never waited for the lock"
            time.sleep(0.3)
        jobs_worker.kill()
        job = wait_job(backup.job, timeout=60, statuses=("interrupted",))
        deadline = time.monotonic() + 20
        while count(dumps) != "0":
            assert time.monotonic() < deadline, "pg_dump kept waiting in the db container after the worker died"
            time.sleep(0.5)
        assert holder.poll() is None, "the lock was released before the check"
        assert tagged_processes(lab1, job) == []
        settle_backups()
        backup.refresh_from_db()
        assert backup.status == "interrupted"
    finally:
        holder.kill()
        lab1.ssh(
            *psql,
            "-c",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(90)%' AND pid <> pg_backend_pid()",
        )
        jobs_worker.start()
