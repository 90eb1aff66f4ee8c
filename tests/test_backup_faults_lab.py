"""A backup whose surroundings break while it runs (lab, real worker): the panel's PostgreSQL stopped for longer
than the lease, Redis restarted, the server's sshd paused. Each time the outcome is bounded and truthful: a backup
is good only when it really finished, every log line is kept, and nothing of the job keeps running on the server.

pg_dump is made to wait for a table lock (it writes nothing meanwhile), so the fault lands mid-backup every time.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from backups.models import BackupSettings
from backups.services import settle_backups, start_backup
from backups.storage import open_storage
from panel.jobs.models import Job, JobLogLine
from tests.backup_fixtures import make_local_storage
from tests.lab_helpers import wait_job
from tests.services import restart_redis, start_postgres, stop_postgres
from tests.test_backup_lab import DB, deployed, local_root
from tests.test_job_faults_lab import tagged_processes

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

__all__ = ["deployed", "local_root"]  # fixtures

PSQL = ["docker", "exec", "-i", DB, "psql", "-U", "odoo", "-d", "prod", "-q"]
WAITING = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'"
DUMPS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'"


def count(host: Any, sql: str) -> str:
    return host.ssh(*PSQL, "-tAc", sql).stdout.strip()


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@contextmanager
def table_locked(host: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A session holding an exclusive lock on a table of production's database (pg_dump waits for it)."""
    assert host.ssh(*PSQL, "-c", "CREATE TABLE IF NOT EXISTS locked_here (x int)").returncode == 0
    holder = subprocess.Popen(
        host.ssh_argv(*PSQL, "-c", "BEGIN; LOCK TABLE locked_here IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield holder
    finally:
        holder.kill()
        host.ssh(*PSQL, "-c", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()")  # fmt: skip


def backup_waiting_for_the_lock(environment: Any, host: Any, actor: Any, root: Any) -> Any:
    BackupSettings.objects.get_or_create(
        environment=environment, defaults={"storage": make_local_storage(environment.project.organization, root)}
    )
    backup = start_backup(environment=environment, actor=actor)
    wait_until(lambda: count(host, WAITING) == "1", 60, "pg_dump never waited for the lock")
    return backup


def assert_nothing_left(host: Any, job: Job, backup: Any) -> None:
    wait_until(lambda: count(host, DUMPS) == "0", 30, "pg_dump kept running in the db container")
    assert tagged_processes(host, job) == []
    assert [obj.key for obj in open_storage(backup.storage).list(backup.key_prefix + "/")] == []
    seqs = list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, job.last_seq + 1)), "a log line was lost"


@pytest.mark.exclusive
def test_postgresql_stopped_longer_than_the_lease_interrupts_the_backup_and_ends_pg_dump(
    deployed, jobs_worker, monitoring_worker, lab1, local_root, users
) -> None:
    with table_locked(lab1):
        backup = backup_waiting_for_the_lock(deployed, lab1, users["alice"], local_root)
        stop_postgres()
        try:
            # Longer than the lease (3 s in the tests): the job must end its work on the server by itself.
            time.sleep(8)
            assert count(lab1, DUMPS) == "0", "pg_dump kept waiting after the job lost the database"
        finally:
            start_postgres()
            connections.close_all()
        job = wait_job(backup.job, timeout=120)
        assert job.status == "interrupted", job.reason
        assert "database was unreachable" in job.reason
        settle_backups()
        backup.refresh_from_db()
        assert backup.status == "interrupted" and f"#{job.pk}" in backup.reason
        assert_nothing_left(lab1, job, backup)


@pytest.mark.exclusive
def test_a_redis_restart_mid_backup_costs_nothing(deployed, jobs_worker, monitoring_worker, lab1, local_root, users):
    with table_locked(lab1) as holder:
        backup = backup_waiting_for_the_lock(deployed, lab1, users["alice"], local_root)
        restart_redis(settings.REDIS_URL, down_for=2.0)
        holder.kill()
        lab1.ssh(*PSQL, "-c", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()")  # fmt: skip
        job = wait_job(backup.job, timeout=120)
    assert job.status == "succeeded", job.reason
    backup.refresh_from_db()
    assert backup.status == "good" and backup.verified_at, backup.reason
    seqs = list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, job.last_seq + 1))
    assert JobLogLine.objects.filter(job=job, text__startswith=f"Backup #{backup.pk} is good").exists()


def test_a_server_that_stops_answering_fails_the_backup_in_bounded_time(
    deployed, jobs_worker, monitoring_worker, lab1, local_root, users
) -> None:
    with table_locked(lab1):
        backup = backup_waiting_for_the_lock(deployed, lab1, users["alice"], local_root)
        lab1.pause_sshd()
        paused_at = time.monotonic()
        # pg_dump is silent while it waits, so silence proves nothing: a keepalive every SSH_KEEPALIVE_INTERVAL
        # that the server does not answer within SSH_BANNER_TIMEOUT does.
        bound = settings.SSH_KEEPALIVE_INTERVAL * 2 + settings.SSH_BANNER_TIMEOUT + 10
        try:
            job = wait_job(backup.job, timeout=bound + 30)
            took = time.monotonic() - paused_at
        finally:
            lab1.resume_sshd()
        assert took <= bound, took
        assert job.status == "failed", job.reason
        assert "stopped answering over SSH: pg_dump moved no data for" in job.reason, job.reason
        backup.refresh_from_db()
        assert backup.status == "failed" and backup.reason
        # Once the server answers again it has ended what the job started there.
        assert_nothing_left(lab1, job, backup)
