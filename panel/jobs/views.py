"""HTML views of jobs: the list, one job with its live log (catching up through ``/api/v1/jobs/<id>/lines/``), and
the log as a download.

Jobs are seen with ``Action.VIEW_DETAILS``: logs mention hosts and commands, so customers never reach them.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from panel.accounts.choices import Action
from panel.accounts.scoping import for_user, get_for_user
from panel.jobs.choices import JobStatus
from panel.jobs.models import Job, JobLogLine

JOBS_PAGE_SIZE = 50


@require_GET
@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    """Recent jobs of every organization the user may see details of, newest first."""
    jobs = for_user(Job, request.user, Action.VIEW_DETAILS).select_related(
        "server", "environment__project", "created_by"
    )
    status = request.GET.get("status", "")
    if status:
        jobs = jobs.filter(status=status)
    page = Paginator(jobs, JOBS_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "jobs/job_list.html", {"page": page, "status": status, "statuses": JobStatus.choices})


@require_GET
@login_required
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    """A job: what, on which target, its status and steps, and its log streamed live (static/js/joblog.js)."""
    job = get_for_user(
        Job.objects.select_related("server", "environment__project", "created_by"),
        request.user,
        Action.VIEW_DETAILS,
        pk=job_id,
    )
    steps = job.result.get("steps", []) if isinstance(job.result, dict) else []
    return render(request, "jobs/job_detail.html", {"job": job, "steps": steps})


@require_GET
@login_required
def job_log_download(request: HttpRequest, job_id: int) -> StreamingHttpResponse:
    """The whole log as plain text, streamed in pages (a long log is never loaded at once)."""
    job = get_for_user(Job, request.user, Action.VIEW_DETAILS, pk=job_id)

    def lines() -> Iterator[str]:
        yield f"# {job} ({job.get_status_display()})\n"
        after = 0
        while True:
            rows = list(JobLogLine.objects.filter(job=job, seq__gt=after).order_by("seq")[: settings.JOB_LOG_PAGE_SIZE])
            if not rows:
                return
            for row in rows:
                yield f"{row.ts:%Y-%m-%d %H:%M:%S} {row.stream:<5} {row.text}\n"
            after = rows[-1].seq

    response = StreamingHttpResponse(lines(), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.log.txt"'
    return response
