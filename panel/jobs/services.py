"""The only code that changes a job's status: create and enqueue, claim, log, heartbeat, finish, cancel, reap."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from panel.accounts.models import Organization
from panel.jobs.choices import ACTIVE_STATES, JobStatus, LogStream
from panel.jobs.models import Job, JobLogLine
from panel.jobs.publisher import publish

logger = logging.getLogger(__name__)

T = TypeVar("T")
# What a lost or restarted database raises; a connection that raised one is closed, never reused.
DATABASE_ERRORS = (OperationalError, InterfaceError)


class DatabaseUnreachable(Exception):
    """The panel's database did not answer within the time allowed."""


class QueueUnavailable(Exception):
    """The job could not be handed to the workers (the broker is unreachable); it was ended, nothing runs."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(
            "The panel could not queue this job: its message broker (Redis) is unreachable. Nothing was started "
            "and nothing is locked; try again once Redis is back."
        )


def with_database(function: Callable[[], T], *, within: float) -> T:
    """Call ``function``; on a database connection error reconnect and retry for up to ``within`` seconds.

    A PostgreSQL restart breaks every open connection, and Django never resets a broken connection outside a
    request: without this, a worker's job thread keeps failing on the dead connection long after the database
    is back.
    """
    deadline = time.monotonic() + within
    delay = 0.2
    while True:
        try:
            return function()
        except DATABASE_ERRORS as exc:
            connection.close()
            if time.monotonic() + delay > deadline:
                raise DatabaseUnreachable(
                    f"The panel's database did not answer for {within:g} s ({str(exc).strip()[:200]})."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def ensure_database() -> None:
    """Drop this thread's connection if the database broke it (the next query then reconnects)."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()


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

    Raises ``TargetBusy`` when ``lock_key`` is held by another queued or running job (database-enforced), and
    ``QueueUnavailable`` (when the transaction commits) if the broker cannot take the job.
    """
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
    transaction.on_commit(lambda: publish_job(job))
    return job


def publish_job(job: Job) -> None:
    """Hand a queued job to the workers; if the broker cannot take it, end the job and raise ``QueueUnavailable``.

    A job left queued without a message would hold its target's lock until someone canceled it by hand.
    """
    from panel.jobs.tasks import run_job

    policy = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}
    try:
        run_job.apply_async((job.pk,), retry=True, retry_policy=policy)
    except Exception as exc:
        logger.warning("job %s: could not publish it to the broker: %s", job.pk, exc)
        error = QueueUnavailable(job)
        if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.FAILED, reason=str(error), finished_at=timezone.now()
        ):
            job.refresh_from_db()
        raise error from exc
    Job.objects.filter(pk=job.pk).update(published_at=timezone.now(), publish_count=F("publish_count") + 1)


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
    """End a job with its real outcome; False if it had ended otherwise (canceled before it ran, say).

    The job's own worker knows better than the reaper, which only saw its heartbeat stop: an ``interrupted``
    left by the reaper is replaced by the outcome the worker records, even when that write needs retries
    (``JOB_FINISH_RETRY_SECONDS``) because the database was away.
    """
    if status != JobStatus.SUCCEEDED and not reason:
        raise ValueError("Every non-success needs a reason.")
    fields: dict[str, Any] = {"status": status, "reason": reason, "finished_at": timezone.now()}
    if result is not None:
        fields["result"] = result

    def write() -> bool:
        updated = Job.objects.filter(pk=job.pk, status__in=[JobStatus.RUNNING, JobStatus.INTERRUPTED]).update(**fields)
        if updated:
            job.refresh_from_db()
            publish_status(job)
        return bool(updated)

    return with_database(write, within=settings.JOB_FINISH_RETRY_SECONDS)


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


def _database_started_at() -> Any:
    """When the PostgreSQL server started (None on other databases)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        return cursor.fetchone()[0]


def stale_reason(job: Job, database_started_at: Any = None) -> str:
    """Why a running job's heartbeat stopped, as far as the reaper can tell."""
    since = f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S %Z}"
    if database_started_at is not None and job.heartbeat_at is not None and database_started_at > job.heartbeat_at:
        return (
            f"The panel's database was unreachable: PostgreSQL restarted at {database_started_at:%H:%M:%S %Z}, and "
            f"the job's worker ({job.worker or 'unknown'}) has not reported since {since}. A job that cannot reach "
            "the database stops its work on the server; check the target and run it again."
        )
    return (
        f"The worker running this job ({job.worker or 'unknown'}) stopped responding; no heartbeat since {since}. "
        "The job was not resumed: check the target and run it again."
    )


def reap_stale_jobs() -> list[int]:
    """Mark running jobs whose heartbeat went stale as interrupted (their targets are free again).

    An interrupted job is never resumed: its task's redelivery finds it no longer queued and does nothing. A job
    loses its lease (``JOB_LEASE_SECONDS``) before it goes stale (``JOB_STALE_AFTER``), so by the time it is
    reaped it has stopped its remote work.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER)
    reaped = []
    stale = list(Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff))
    database_started_at = _database_started_at() if stale else None
    for job in stale:
        reason = stale_reason(job, database_started_at)
        if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).update(
            status=JobStatus.INTERRUPTED, reason=reason, finished_at=timezone.now()
        ):
            job.refresh_from_db()
            append_lines(job.pk, [(LogStream.PANEL, f"Interrupted: {reason}")])
            publish_status(job)
            reaped.append(job.pk)
            logger.warning("job %s interrupted: %s", job.pk, reason)
    return reaped


def reap_unclaimed_jobs() -> list[int]:
    """Queued jobs no worker took within ``JOB_QUEUE_TIMEOUT``: publish each once more, then end it as failed.

    A message can be lost with a flushed or restarted broker; the job must not hold its target forever.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_QUEUE_TIMEOUT)
    ended = []
    for job in Job.objects.filter(status=JobStatus.QUEUED, created_at__lt=cutoff).exclude(published_at__gte=cutoff):
        if job.publish_count < 2:
            logger.warning("job %s: no worker took it in time; publishing it again", job.pk)
            try:
                publish_job(job)
            except QueueUnavailable:
                ended.append(job.pk)
            continue
        reason = (
            f"No worker took this job within {settings.JOB_QUEUE_TIMEOUT:g} s, twice: is a worker running on the "
            "jobs queue? Nothing was started; run it again."
        )
        if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.FAILED, reason=reason, finished_at=timezone.now()
        ):
            job.refresh_from_db()
            publish_status(job)
            ended.append(job.pk)
    return ended


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


def publish_progress(job_id: int, progress: dict[str, Any]) -> None:
    """Store what a running data-moving step has done (``{"label", "done", "total"}``, bytes) and tell viewers."""
    Job.objects.filter(pk=job_id).update(progress=progress)
    _send(job_id, {"type": "job.progress", "progress": progress})


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

    The same thread heartbeats the job and keeps its lease: a heartbeat the database refuses (the job was reaped
    or ended elsewhere), or no successful write for ``JOB_LEASE_SECONDS``, loses the lease, and ``on_lost`` is
    called at once (the runner ends the job's hold on the server there). Lines that could not be written stay
    buffered, in order, until they are stored; a broken database connection is closed and reopened.
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
        self.last_contact = time.monotonic()
        self.lost_reason = ""
        self.on_lost: Callable[[str], None] | None = None

    def __enter__(self) -> JobLog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=30)
        with_database(self._write_pending, within=settings.JOB_FINISH_RETRY_SECONDS)

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

    def flush(self) -> bool:
        """Write what is buffered now; False (lines kept for the next try) if the database did not take them."""
        try:
            self._write_pending()
        except DATABASE_ERRORS:
            connection.close()
            return False
        return True

    def _write_pending(self) -> None:
        # One writer at a time keeps sequence numbers in order; a failed batch goes back to the front.
        with self.write_lock:
            with self.lock:
                batch, self.pending = self.pending, []
            if not batch:
                return
            try:
                append_lines(self.job_id, batch)
            except BaseException:
                with self.lock:
                    self.pending[:0] = batch
                raise
            self.last_contact = time.monotonic()

    def lose(self, reason: str) -> None:
        """The job may not go on: remember why and tell the runner (once)."""
        if self.lost_reason:
            return
        self.lost_reason = reason
        logger.warning("job %s lost its lease: %s", self.job_id, reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    def _beat(self) -> None:
        if time.monotonic() - self.last_heartbeat < settings.JOB_HEARTBEAT_INTERVAL:
            return
        alive = heartbeat(self.job_id)
        self.last_heartbeat = self.last_contact = time.monotonic()
        if not alive:
            status = Job.objects.filter(pk=self.job_id).values_list("status", flat=True).first()
            self.lose(
                f"The panel no longer counts this job as running (it is {status or 'gone'}), so it stopped its work "
                "on the server at once."
            )

    def _loop(self) -> None:
        lease = settings.JOB_LEASE_SECONDS
        try:
            while not self.stopping.is_set():
                self.wake.wait(settings.JOB_LOG_FLUSH_INTERVAL)
                self.wake.clear()
                try:
                    self._write_pending()
                    self._beat()
                except DATABASE_ERRORS:
                    connection.close()
                except Exception:
                    logger.exception("job %s: could not write log lines", self.job_id)
                if time.monotonic() - self.last_contact > lease:
                    self.lose(
                        f"The panel's database was unreachable for more than {lease:g} s (the job's lease), so the "
                        "job stopped its work on the server at once; nothing of it keeps running there."
                    )
        finally:
            connection.close()
