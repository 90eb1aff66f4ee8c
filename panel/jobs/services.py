"""The only code that changes a job's status: create and enqueue, claim, log, heartbeat, finish, cancel, reap."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from panel.accounts.models import Organization
from panel.jobs.choices import ACTIVE_STATES, JobStatus, LogStream
from panel.jobs.models import Job, JobLogLine
from panel.jobs.publisher import publish

logger = logging.getLogger(__name__)


class TargetBusy(Exception):
    """Another mutating job holds the target; ``job`` is that job."""

    def __init__(self, job: Job | None) -> None:
        self.job = job
        super().__init__(f"Job #{job.pk if job else '?'} is already running on this target.")


def group_name(job_id: int) -> str:
    """The channel group a job's live output goes to."""
    return f"job-{job_id}"


def worker_name() -> str:
    """This process's identity, recorded on the jobs it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def create_job(
    *,
    kind: str,
    organization: Organization,
    created_by: Any = None,
    server: Any = None,
    environment: Any = None,
    lock_key: str | None = None,
    params: dict[str, Any] | None = None,
    trigger: str = "user",
) -> Job:
    """Create a queued job and enqueue its task once the transaction commits.

    Raises ``TargetBusy`` when ``lock_key`` is held by another queued or running job (database-enforced).
    """
    from panel.jobs.tasks import run_job

    try:
        with transaction.atomic():
            job = Job.objects.create(
                kind=kind,
                organization=organization,
                created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
                server=server,
                environment=environment,
                lock_key=lock_key,
                params=params or {},
                trigger=trigger,
            )
    except IntegrityError as exc:
        holder = Job.objects.filter(lock_key=lock_key, status__in=ACTIVE_STATES).first()
        raise TargetBusy(holder) from exc
    transaction.on_commit(lambda: run_job.delay(job.pk))
    return job


def claim(job_id: int) -> Job | None:
    """Atomically move a queued job to running; None if someone else claimed it or it ended (never runs twice)."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker_name()
    )
    if claimed != 1:
        return None
    return Job.objects.get(pk=job_id)


def finish(job: Job, status: str, reason: str = "", result: dict[str, Any] | None = None) -> bool:
    """End a running job with a terminal status; False if it was no longer running (e.g. reaped)."""
    if status != JobStatus.SUCCEEDED and not reason:
        raise ValueError("Every non-success needs a reason.")
    fields: dict[str, Any] = {"status": status, "reason": reason, "finished_at": timezone.now()}
    if result is not None:
        fields["result"] = result
    updated = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(**fields)
    if updated:
        job.refresh_from_db()
        publish_status(job)
    return bool(updated)


def request_cancel(job: Job) -> None:
    """Ask a job to stop: a queued job ends at once, a running one at its next step boundary."""
    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELED, reason="Canceled before it started.", finished_at=now, cancel_requested=True
    ):
        job.refresh_from_db()
        publish_status(job)
        return
    Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(cancel_requested=True)


def cancel_requested(job_id: int) -> bool:
    """Whether someone asked the job to stop."""
    return Job.objects.filter(pk=job_id, cancel_requested=True).exists()


def heartbeat(job_id: int) -> bool:
    """Record that the job's worker is alive; False if the job is no longer running."""
    return bool(Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now()))


def reap_stale_jobs() -> list[int]:
    """Mark running jobs whose heartbeat went stale as interrupted (their targets are free again).

    An interrupted job is never resumed: its task's redelivery finds it no longer queued and does nothing.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER)
    reaped = []
    for job in Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff):
        reason = (
            f"The worker running this job ({job.worker or 'unknown'}) stopped responding; no heartbeat since "
            f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S %Z}. The job was not resumed: check the target and run it again."
        )
        if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).update(
            status=JobStatus.INTERRUPTED, reason=reason, finished_at=timezone.now()
        ):
            job.refresh_from_db()
            append_lines(job.pk, [(LogStream.PANEL, f"Interrupted: {reason}")])
            publish_status(job)
            reaped.append(job.pk)
            logger.warning("job %s interrupted: %s", job.pk, reason)
    return reaped


def _send(job_id: int, message: dict[str, Any]) -> None:
    publish(group_name(job_id), message)


def publish_status(job: Job) -> None:
    """Tell live viewers a job changed status."""
    payload = {
        "type": "job.status",
        "status": job.status,
        "reason": job.reason,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "last_seq": job.last_seq,
    }
    transaction.on_commit(lambda: _send(job.pk, payload))


def publish_steps(job_id: int, steps: list[dict[str, Any]]) -> None:
    """Store a running job's steps (name, state, duration, log range) and tell live viewers."""
    snapshot = [dict(step) for step in steps]
    Job.objects.filter(pk=job_id).update(result={"steps": snapshot})
    _send(job_id, {"type": "job.steps", "steps": snapshot})


def append_lines(job_id: int, lines: Iterable[tuple[str, str]]) -> list[JobLogLine]:
    """Store lines with the next sequence numbers (row lock on the job) and push them after commit."""
    lines = list(lines)
    if not lines:
        return []
    with transaction.atomic():
        job = Job.objects.select_for_update().only("pk", "last_seq").get(pk=job_id)
        now = timezone.now()
        rows = [
            JobLogLine(job_id=job_id, seq=job.last_seq + index, ts=now, stream=stream, text=text)
            for index, (stream, text) in enumerate(lines, start=1)
        ]
        JobLogLine.objects.bulk_create(rows)
        Job.objects.filter(pk=job_id).update(last_seq=job.last_seq + len(rows))
        payload = {"type": "job.lines", "lines": [serialize_line(row) for row in rows]}
        transaction.on_commit(lambda: _send(job_id, payload))
    return rows


def serialize_line(line: JobLogLine) -> dict[str, Any]:
    """A log line as the API and the websocket send it."""
    return {"seq": line.seq, "ts": line.ts.isoformat(), "stream": line.stream, "text": line.text}


class JobLog:
    """Buffers a running job's output and writes it in batches (by size or age) from a background thread.

    The same thread heartbeats the job, so a job stuck in a long remote command still shows it is alive.
    """

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.pending: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"job-{job_id}-log", daemon=True)
        self.last_heartbeat = time.monotonic()

    def __enter__(self) -> JobLog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=30)
        self.flush()

    def write(self, text: str, stream: str = LogStream.PANEL) -> None:
        """Queue one line (multi-line text becomes several lines)."""
        with self.lock:
            for line in text.splitlines() or [""]:
                self.pending.append((stream, line[: settings.JOB_LOG_MAX_LINE]))
            if len(self.pending) >= settings.JOB_LOG_BATCH_LINES:
                self.wake.set()

    def output(self, stream: str, line: str) -> None:
        """Callback for remote command output."""
        self.write(line, LogStream.STDERR if stream == "err" else LogStream.STDOUT)

    def flush(self) -> None:
        """Write what is buffered now (one writer at a time keeps sequence numbers in order)."""
        with self.write_lock:
            with self.lock:
                batch, self.pending = self.pending, []
            if batch:
                append_lines(self.job_id, batch)

    def _loop(self) -> None:
        from django.db import connection

        try:
            while not self.stopping.is_set():
                self.wake.wait(settings.JOB_LOG_FLUSH_INTERVAL)
                self.wake.clear()
                try:
                    self.flush()
                    if time.monotonic() - self.last_heartbeat >= settings.JOB_HEARTBEAT_INTERVAL:
                        heartbeat(self.job_id)
                        self.last_heartbeat = time.monotonic()
                except Exception:
                    logger.exception("job %s: could not write log lines", self.job_id)
        finally:
            connection.close()
