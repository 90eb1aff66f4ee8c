"""The job lease and the reaper, with a real worker, PostgreSQL and a lab host.

- A running job the panel stopped counting as running (reaped, ended elsewhere) has its heartbeat refused: it
  stops at once, and the server ends what it started (checked with /proc on the lab host).
- The reaper says a database restart happened when PostgreSQL started after the job's last heartbeat.
- Queued jobs no worker took are published once more, then ended with a reason.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from panel.jobs import services
from panel.jobs.models import Job, JobLogLine
from tests.lab_helpers import add_lab_server, wait_job

pytestmark = pytest.mark.django_db(transaction=True)


def processes_with(host: Any, needle: str) -> list[str]:
    result = host.ssh("ps", "-eo", "args", check=True)
    return [line for line in result.stdout.splitlines() if needle in line and "ps -eo" not in line]


@pytest.mark.lab
def test_it_stops_the_remote_work_of_a_job_whose_heartbeat_is_refused(
    jobs_worker: Any, lab1: Any, users: Any, orgs: Any
) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    marker = f"lease-{uuid.uuid4().hex[:8]}"
    job = services.create_job(
        kind="test_remote_sleep", organization=orgs["a"], server=server, lock_key=f"server:{server.pk}",
        params={"marker": marker},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not JobLogLine.objects.filter(job=job, text="started").exists():
        assert time.monotonic() < deadline, "the remote command never started"
        time.sleep(0.2)
    assert processes_with(lab1, marker), "the remote command is not running"
    # Someone else ended the job (as the reaper does): its next heartbeat is refused.
    Job.objects.filter(pk=job.pk).update(status="interrupted", reason="Reaped by the test.", finished_at=timezone.now())
    stopped_by = time.monotonic() + 10
    while processes_with(lab1, marker):
        assert time.monotonic() < stopped_by, "the remote command outlived the job's lease"
        time.sleep(0.2)
    job = wait_job(job, timeout=30, statuses=("interrupted",))
    deadline = time.monotonic() + 30
    while "no longer counts this job as running" not in job.reason:
        assert time.monotonic() < deadline, job.reason
        time.sleep(0.2)
        job.refresh_from_db()
    assert "stopped its work on the server" in job.reason
    texts = list(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
    assert not any(text.startswith("slept") for text in texts)
    assert lab1.ssh("sh", "-c", f"grep -lzF DOODBA_PANEL_JOB={job.pk}- /proc/[0-9]*/environ || true").stdout == ""


def test_the_reaper_says_when_the_database_restarted(orgs: Any, settings: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        started = cursor.fetchone()[0]
    restarted = Job.objects.create(
        kind="test_emit", organization=orgs["a"], status="running", worker="w:1",
        heartbeat_at=started - timedelta(seconds=30), started_at=started - timedelta(minutes=1),
    )  # fmt: skip
    # A heartbeat after PostgreSQL started, stale all the same: the worker itself went silent.
    while timezone.now() - started < timedelta(seconds=settings.JOB_STALE_AFTER + 2):
        time.sleep(0.5)
    silent = Job.objects.create(
        kind="test_emit", organization=orgs["a"], status="running", worker="w:2",
        heartbeat_at=started + timedelta(seconds=1), started_at=started,
    )  # fmt: skip
    reaped = services.reap_stale_jobs()
    assert set(reaped) >= {restarted.pk, silent.pk}
    restarted.refresh_from_db()
    silent.refresh_from_db()
    assert restarted.status == silent.status == "interrupted"
    assert "The panel's database was unreachable: PostgreSQL restarted at" in restarted.reason
    assert "stopped responding" in silent.reason and "database" not in silent.reason


def test_it_republishes_then_ends_queued_jobs_that_no_worker_took(jobs_worker: Any, orgs: Any, settings: Any) -> None:
    old = timezone.now() - timedelta(seconds=settings.JOB_QUEUE_TIMEOUT + 60)
    # A job whose message was lost (a flushed broker): queued, published once, long ago.
    lost = Job.objects.create(
        kind="test_emit", organization=orgs["a"], params={"count": 3}, created_at=old, published_at=old,
        publish_count=1,
    )  # fmt: skip
    # One published twice already and still not taken.
    abandoned = Job.objects.create(
        kind="test_emit", organization=orgs["a"], created_at=old, published_at=old, publish_count=2,
        lock_key="environment:999999",
    )  # fmt: skip
    ended = services.reap_unclaimed_jobs()
    assert ended == [abandoned.pk]
    abandoned.refresh_from_db()
    assert abandoned.status == "failed" and "No worker took this job" in abandoned.reason
    lost = wait_job(lost, timeout=60)
    assert lost.status == "succeeded", lost.reason
    assert lost.publish_count == 2
    # The lock the abandoned job held is free again.
    services.create_job(kind="test_emit", organization=orgs["a"], lock_key="environment:999999")
