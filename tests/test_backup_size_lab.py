"""Size (lab): a backup of more than 3 GiB (database plus filestore, random content that does not compress) goes
through the S3 backend (``rclone serve s3``, which stores on disk) in a real Celery worker process, is recorded
good, and the peak RSS (``VmHWM``) of the worker process that ran it stays under ``RSS_BOUND_MIB``.

The job runs in a worker of its own (one prefork child), started for this test only, so that its peak RSS is the
backup's and not that of whatever jobs an earlier test ran. The data is made on the lab host itself, fast: the
database from ``/dev/urandom`` by the server (``pg_read_binary_file``), the filestore by Python in the odoo
container, content-named like Odoo's (``<xx>/<sha1>``). Everything is removed afterwards: the environment's volumes
by the ``deploy_env`` fixture, the stored objects here.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from backups.models import Backup, BackupSettings
from backups.services import start_backup
from panel.jobs.models import JobLogLine
from tests.backup_fixtures import make_s3_storage
from tests.conftest import ManagedProcess, celery_worker, wait_for_log
from tests.deploy_fixtures import KEY, deploy
from tests.lab_helpers import wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
GiB = 1024 * MiB
ODOO = f"{KEY}-odoo-1"
DB = f"{KEY}-db-1"
FILESTORE = "/var/lib/odoo/filestore/prod"
# The bound stated in the README (Backups → Size): the worker child that ran a 3 GiB backup.
RSS_BOUND_MIB = 400
DATABASE_MIB = 128
FILE_MIB = 8
TOTAL_BYTES = 3 * GiB + 16 * MiB

# Content-named files of random bytes, written by two processes (the lab host has two cores).
FILL_FILESTORE = r"""
import hashlib, os, sys
root, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def fill(n):
    for _ in range(n):
        data = os.urandom(size)
        sha1 = hashlib.sha1(data).hexdigest()
        os.makedirs(f"{root}/{sha1[:2]}", exist_ok=True)
        with open(f"{root}/{sha1[:2]}/{sha1}", "wb") as out:
            out.write(data)
half = count // 2
if os.fork() == 0:
    fill(half)
    os._exit(0)
fill(count - half)
_, status = os.wait()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def fill_database(host: Any, mib: int) -> subprocess.Popen[str]:
    """Start adding ``mib`` MiB of random bytea rows to the environment's database (the server reads /dev/urandom;
    random bytes do not compress, so the dump moves about as much)."""
    sql = (
        "DROP TABLE IF EXISTS size_lab; CREATE TABLE size_lab AS SELECT g AS id, "
        f"pg_read_binary_file('/dev/urandom', 0, {MiB}) AS data FROM generate_series(1, {mib}) g"
    )
    argv = ["docker", "exec", DB, "psql", "-U", "odoo", "-d", "prod", "-v", "ON_ERROR_STOP=1", "-qc", sql]
    return subprocess.Popen(host.ssh_argv(*argv, timeout=15), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fill_filestore(host: Any, count: int, file_mib: int) -> subprocess.Popen[str]:
    """Start writing ``count`` random files of ``file_mib`` MiB into the filestore (as the odoo user)."""
    argv = ["docker", "exec", "-u", "odoo", ODOO, "python3", "-c", FILL_FILESTORE, FILESTORE, str(count),
            str(file_mib * MiB)]  # fmt: skip
    return subprocess.Popen(host.ssh_argv(*argv, timeout=15), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fill(host: Any, database_mib: int, filestore_mib: int, file_mib: int = FILE_MIB) -> None:
    """Both at once (one runs in the db container, the other in the odoo container)."""
    procs = [fill_database(host, database_mib), fill_filestore(host, filestore_mib // file_mib, file_mib)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err


def vm_hwm_mib(pid: int) -> float:
    """The peak resident set size of a process (``VmHWM`` in /proc/<pid>/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@contextmanager
def own_worker(log_dir: Path, name: str = "size-jobs") -> Iterator[ManagedProcess]:
    """A jobs worker with one prefork child, the only one on the queue while it runs."""
    worker = celery_worker(name, "jobs", log_dir, "--concurrency", "1")
    worker.start()
    try:
        wait_for_log(worker, "ready.")
        yield worker
    finally:
        worker.stop()


def job_pid(backup: Backup) -> int:
    """The pid of the process that ran the backup's job (``Job.worker`` is ``host:pid``)."""
    backup.job.refresh_from_db()
    return int(backup.job.worker.rpartition(":")[2])


def test_it_backs_up_more_than_3_gib_through_s3_within_a_bounded_worker_rss(
    deploy_env, jobs_worker, lab1, rclone_s3, users, process_logs
) -> None:
    started = time.monotonic()
    deployment = deploy(deploy_env, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason
    deploy_env.refresh_from_db()
    filestore_mib = (TOTAL_BYTES - DATABASE_MIB * MiB) // MiB
    fill(lab1, DATABASE_MIB, filestore_mib)
    filled = time.monotonic()

    bucket = "size-" + str(deploy_env.pk)
    rclone_s3.client().create_bucket(Bucket=bucket)
    storage_row = make_s3_storage(deploy_env.project.organization, rclone_s3, bucket)
    BackupSettings.objects.create(environment=deploy_env, storage=storage_row)
    jobs_worker.stop()  # the backup runs in a worker of its own (the next test's fixture starts this one again)
    try:
        with own_worker(process_logs) as worker:
            backup = start_backup(environment=deploy_env, actor=users["alice"])
            job = wait_job(backup.job, timeout=600)
            pid = job_pid(backup)
            peak = vm_hwm_mib(pid)
            assert worker.process is not None and pid != worker.process.pid, "the job ran in the pool's child"
        backed_up = time.monotonic()
        backup.refresh_from_db()
        log = "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
        assert job.status == "succeeded", job.reason + "\n" + log[-3000:]
        assert backup.status == "good", backup.reason
        # It really moved 3 GiB: the dump plus every file, stored and confirmed by the S3 server.
        assert backup.database_bytes >= DATABASE_MIB * MiB
        assert backup.database_bytes + backup.filestore_bytes >= 3 * GiB
        assert backup.uploaded_bytes >= 3 * GiB
        objects = backup.manifest["objects"]
        files = [entry for entry in objects if entry["role"] == "filestore"]
        assert len(files) >= filestore_mib // FILE_MIB  # and what the sample already has
        on_disk = {str(path.relative_to(rclone_s3.root / bucket)): path.stat().st_size
                   for path in (rclone_s3.root / bucket).rglob("*") if path.is_file()}  # fmt: skip
        for entry in objects:
            assert on_disk.get(entry["key"]) == entry["size"], entry
        assert sum(on_disk.values()) >= 3 * GiB
        size = (backup.database_bytes + backup.filestore_bytes) / GiB
        timing = f"{size:.2f} GiB backed up in {backed_up - filled:.1f} s (data made in {filled - started:.1f} s)"
        assert peak < RSS_BOUND_MIB, f"the worker's peak RSS was {peak:.0f} MiB; {timing}\n{log[-3000:]}"
    finally:
        shutil.rmtree(rclone_s3.root / bucket, ignore_errors=True)
