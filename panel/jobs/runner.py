"""Runs a claimed job: the base owns state changes, tracebacks, heartbeat and log batching; handlers only work.

A handler is registered per job kind with ``@handler(kind)`` and receives a ``JobContext``. It returns a result
mapping (stored on the job) or raises: ``JobFailed`` / ``RemoteError`` carry a message meant for people, any
other exception becomes "internal error" with the traceback in the application log, not in the job log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from panel.jobs import services
from panel.jobs.choices import JobStatus
from panel.jobs.models import Job
from panel.remote.errors import RemoteError

logger = logging.getLogger(__name__)

Handler = Callable[["JobContext"], dict[str, Any] | None]
HANDLERS: dict[str, Handler] = {}


class JobFailed(Exception):
    """A failure explained in words a person can act on."""


class JobCanceled(Exception):
    """The job stopped at a step boundary because someone canceled it."""


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``kind``."""

    def register(function: Handler) -> Handler:
        HANDLERS[kind] = function
        return function

    return register


class JobContext:
    """What a handler gets: the job, its log, step timing and cancellation checks."""

    def __init__(self, job: Job, log: services.JobLog) -> None:
        self.job = job
        self.log = log
        self.steps: list[dict[str, Any]] = []

    def write(self, text: str) -> None:
        """A line from the panel itself."""
        self.log.write(text)

    def check_cancel(self) -> None:
        """Stop here if someone canceled the job."""
        if services.cancel_requested(self.job.pk):
            raise JobCanceled("Canceled on request.")

    @contextmanager
    def step(self, name: str, *, cancelable: bool = True) -> Iterator[None]:
        """A named step with its duration recorded in the job's result; cancellation is checked before it.

        Recovery steps (a rollback after a failure or a cancel) pass ``cancelable=False``: they must finish.
        """
        if cancelable:
            self.check_cancel()
        self.write(f"▶ {name}")
        self.log.flush()
        started = time.monotonic()
        record: dict[str, Any] = {"name": name, "status": "running", "first_seq": self._next_seq()}
        self.steps.append(record)
        services.publish_steps(self.job.pk, self.steps)
        try:
            yield
        except BaseException:
            record["status"] = "failed"
            raise
        else:
            record["status"] = "succeeded"
        finally:
            record["seconds"] = round(time.monotonic() - started, 3)
            self.log.flush()
            record["last_seq"] = self._next_seq() - 1
            services.publish_steps(self.job.pk, self.steps)

    def _next_seq(self) -> int:
        return int(Job.objects.filter(pk=self.job.pk).values_list("last_seq", flat=True)[0]) + 1


def execute(job_id: int) -> None:
    """Claim and run one job to a terminal state. A job that is not queued any more is left alone."""
    job = services.claim(job_id)
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
            result = function(context) or {}
        except JobCanceled as exc:
            status, reason = JobStatus.CANCELED, str(exc)
        except (JobFailed, RemoteError) as exc:
            status, reason = JobStatus.FAILED, str(exc)
        except Exception:
            logger.exception("job %s (%s) crashed", job.pk, job.kind)
            status, reason = (
                JobStatus.FAILED,
                "Internal error in the panel; the administrator can find the details in the worker log.",
            )
        if reason:
            log.write(f"✖ {reason}")
        else:
            log.write("✔ Done")
        result = dict(result or {})
        if context.steps:
            result["steps"] = context.steps
    services.finish(job, status, reason, result)
