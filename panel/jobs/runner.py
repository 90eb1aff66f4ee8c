"""Runs a claimed job: the base owns state changes, tracebacks, heartbeat, lease and log batching; handlers work.

A handler is registered per job kind with ``@handler(kind)`` and receives a ``JobContext``. It returns a result
mapping (stored on the job) or raises: ``JobFailed`` / ``RemoteError`` carry a message meant for people, any
other exception becomes "internal error" with the traceback in the application log, not in the job log.

``@handler(kind, hold=...)`` names a context manager that holds the job's target on the server for the whole run
(``panel.remote.session``): when the job loses its lease, the runner ends that hold at once, the server ends every
process the job started, and the handler's next remote call raises ``HoldLost``; the job ends ``interrupted``
with the reason, and no recovery runs (another job may own the target by then).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from django.conf import settings

from panel.jobs import services
from panel.jobs.choices import JobStatus
from panel.jobs.models import Job
from panel.remote.errors import RemoteError
from panel.remote.session import Hold, HoldLost

logger = logging.getLogger(__name__)

Handler = Callable[["JobContext"], dict[str, Any] | None]
HoldFactory = Callable[["JobContext"], AbstractContextManager[Hold]]
HANDLERS: dict[str, Handler] = {}
HOLDS: dict[str, HoldFactory] = {}
DATABASE_LOST = (
    "The panel's database became unreachable while the job ran, so it stopped its work on the server at once; "
    "nothing of it keeps running there. Check the target and run it again."
)


class JobFailed(Exception):
    """A failure explained in words a person can act on."""


class JobCanceled(Exception):
    """The job stopped at a step boundary because someone canceled it."""


def handler(kind: str, *, hold: HoldFactory | None = None) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``kind`` (inside ``hold(context)`` when given)."""

    def register(function: Handler) -> Handler:
        HANDLERS[kind] = function
        if hold is not None:
            HOLDS[kind] = hold
        return function

    return register


class JobContext:
    """What a handler gets: the job, its log, step timing and cancellation checks."""

    def __init__(self, job: Job, log: services.JobLog) -> None:
        self.job = job
        self.log = log
        self.steps: list[dict[str, Any]] = []
        self._progress_at = 0.0

    def write(self, text: str) -> None:
        """A line from the panel itself."""
        self.log.write(text)

    def progress(self, label: str, done: int, total: int | None = None, *, force: bool = False) -> None:
        """Report how far a data-moving step is (bytes ``done`` of ``total``, ``None`` when unknown): stored on the
        job and pushed to its viewers at most every ``JOB_PROGRESS_SECONDS`` (always with ``force``, e.g. at the
        end). Best effort: a database hiccup costs one report, never the job."""
        now = time.monotonic()
        if not force and now - self._progress_at < settings.JOB_PROGRESS_SECONDS:
            return
        self._progress_at = now
        report: dict[str, Any] = {"label": label, "done": int(done), "total": None if total is None else int(total)}
        try:
            services.publish_progress(self.job.pk, report)
        except Exception as exc:  # noqa: BLE001 - progress is informational; the step's own work decides
            logger.warning("could not record the progress of job %s: %s", self.job.pk, exc)

    def check_cancel(self) -> None:
        """Stop here if the job lost its lease or someone canceled it."""
        self.check_lease()
        if self._database(lambda: services.cancel_requested(self.job.pk)):
            raise JobCanceled("Canceled on request.")

    def check_lease(self) -> None:
        """Stop at once if the job lost its lease."""
        if self.log.lost_reason:
            raise HoldLost(self.log.lost_reason)

    def _database(self, function: Callable[[], Any]) -> Any:
        """A query of the runner's own, retried over a broken connection for as long as the lease lasts."""
        return services.with_database(function, within=settings.JOB_LEASE_SECONDS)

    @contextmanager
    def step(self, name: str, *, cancelable: bool = True) -> Iterator[None]:
        """A named step with its duration recorded in the job's result; cancellation is checked before it.

        Recovery steps (a rollback after a failure or a cancel) pass ``cancelable=False``: they must finish.
        """
        # The handler's own queries follow a step boundary: give them a live connection after a database restart.
        services.ensure_database()
        if cancelable:
            self.check_cancel()
        else:
            self.check_lease()
        self.write(f"▶ {name}")
        self.log.flush()
        started = time.monotonic()
        record: dict[str, Any] = {"name": name, "status": "running", "first_seq": self._next_seq()}
        self.steps.append(record)
        self._database(lambda: services.publish_steps(self.job.pk, self.steps))
        try:
            yield
        except BaseException:
            record["status"] = "failed"
            raise
        else:
            record["status"] = "succeeded"
        finally:
            record["seconds"] = round(time.monotonic() - started, 3)
            services.ensure_database()
            self.log.flush()
            try:
                record["last_seq"] = self._next_seq() - 1
                self._database(lambda: services.publish_steps(self.job.pk, self.steps))
            except services.DatabaseUnreachable:
                # Recorded with the outcome once the database is back; the step's own error wins here.
                pass
        services.ensure_database()

    def _next_seq(self) -> int:
        # Lines still buffered (the database was away) come before this step's first line.
        stored = self._database(lambda: Job.objects.filter(pk=self.job.pk).values_list("last_seq", flat=True)[0])
        return int(stored) + len(self.log.pending) + 1


@contextmanager
def _held(context: JobContext) -> Iterator[None]:
    """Run the block inside the job kind's hold, ended at once when the job loses its lease."""
    factory = HOLDS.get(context.job.kind)
    with factory(context) if factory is not None else nullcontext() as held:
        if held is not None:
            context.log.on_lost = held.abort
            if context.log.lost_reason:
                held.abort(context.log.lost_reason)
        try:
            yield
        finally:
            context.log.on_lost = None


def execute(job_id: int) -> None:
    """Claim and run one job to a terminal state. A job that is not queued any more is left alone."""
    job = services.with_database(lambda: services.claim(job_id), within=settings.JOB_LEASE_SECONDS)
    if job is None:
        logger.info("job %s was not queued any more; not running it again", job_id)
        return
    function = HANDLERS.get(job.kind)
    with services.JobLog(job.pk) as log:
        context = JobContext(job, log)
        status, reason, result = JobStatus.SUCCEEDED, "", None
        try:
            if function is None:
                raise JobFailed(f"This panel cannot run {job.kind} jobs.")
            with _held(context):
                result = function(context) or {}
        except JobCanceled as exc:
            status, reason = JobStatus.CANCELED, str(exc)
        except (JobFailed, RemoteError) as exc:
            status, reason = JobStatus.FAILED, str(exc)
        except HoldLost as exc:
            status, reason = JobStatus.INTERRUPTED, log.lost_reason or str(exc)
        except (*services.DATABASE_ERRORS, services.DatabaseUnreachable):
            logger.warning("job %s (%s): the database became unreachable", job.pk, job.kind, exc_info=True)
            status, reason = JobStatus.INTERRUPTED, log.lost_reason or DATABASE_LOST
        except Exception:
            logger.exception("job %s (%s) crashed", job.pk, job.kind)
            status, reason = (
                JobStatus.FAILED,
                "Internal error in the panel; the administrator can find the details in the worker log.",
            )
        if log.lost_reason and status != JobStatus.INTERRUPTED:
            # It finished its work, but the panel had stopped counting it as running: say what happened.
            status, reason = JobStatus.INTERRUPTED, log.lost_reason
        if reason:
            log.write(f"✖ {reason}")
        else:
            log.write("✔ Done")
        result = dict(result or {})
        if context.steps:
            result["steps"] = context.steps
    services.finish(job, status, reason, result)
