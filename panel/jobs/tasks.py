"""Celery tasks of the job framework: thin wrappers, ids only in arguments (never secrets)."""

from __future__ import annotations

from celery import shared_task

from panel.jobs import runner, services


@shared_task(name="panel.jobs.tasks.run_job", ignore_result=True)
def run_job(job_id: int) -> None:
    """Run one job (a redelivered message for a job already claimed does nothing)."""
    runner.execute(job_id)


@shared_task(name="panel.jobs.tasks.reap_stale_jobs", ignore_result=True)
def reap_stale_jobs() -> int:
    """Mark jobs whose worker died as interrupted; republish, then end, queued jobs no worker took."""
    return len(services.reap_stale_jobs()) + len(services.reap_unclaimed_jobs())
