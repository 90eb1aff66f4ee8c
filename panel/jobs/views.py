"""HTML views of jobs: the list, one job with its live steps and log (catching up through
``/api/v1/jobs/<id>/lines/``), the log as a download, and cancelling a queued or running job.

Jobs are seen with ``Action.VIEW_DETAILS``: logs mention hosts and commands, so customers never reach them.
Cancelling needs ``Action.CHANGE`` (owners and operators).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from panel.accounts.choices import Action
from panel.accounts.scoping import can, for_user, get_for_user
from panel.accounts.services import record
from panel.jobs.choices import ACTIVE_STATES, JobStatus
from panel.jobs.models import Job, JobLogLine
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy, request_cancel

JOBS_PAGE_SIZE = 50


def active_job(queryset: QuerySet[Job]) -> Job | None:
    """The queued or running job of a target, if any."""
    return queryset.filter(status__in=ACTIVE_STATES).first()


def follow_started_job(
    request: HttpRequest,
    start: Callable[[], Job],
    back: str,
    refused: tuple[type[Exception], ...] = (JobFailed,),
) -> HttpResponse:
    """Run a job start service and follow the job it queued; when the target is busy, or the service refused with
    one of ``refused`` (messages meant for people), go back to the URL ``back`` saying why."""
    try:
        job = start()
    except TargetBusy as exc:
        messages.warning(request, busy_message(exc))
    except refused as exc:
        messages.error(request, str(exc))
    else:
        return redirect("job_detail", job_id=job.pk)
    return redirect(back)


def busy_message(exc: TargetBusy) -> str:
    """A message linking to the job that holds the target."""
    if exc.job is None:
        return "Another job is already running on this target."
    return format_html(
        'Another job is already running on this target: <a href="{}">{}</a>.',
        reverse("job_detail", args=[exc.job.pk]),
        str(exc.job),
    )


def job_steps(job: Job) -> list[dict[str, Any]]:
    """The steps the runner recorded so far (updated live at each step boundary)."""
    steps = job.result.get("steps", []) if isinstance(job.result, dict) else []
    return [step for step in steps if isinstance(step, dict)]


@require_GET
@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    """Recent jobs of every organization the user may see details of, newest first."""
    jobs = for_user(Job, request.user, Action.VIEW_DETAILS).select_related(
        "server", "environment__project", "created_by"
    )
    status = request.GET.get("status", "")
    if status not in JobStatus.values:
        status = ""  # an unknown status (a typo, an old link) lists every job, as no filter does
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
    return render(
        request,
        "jobs/job_detail.html",
        {"job": job, "steps": job_steps(job), "may_cancel": can(request.user, Action.CHANGE, job)},
    )


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


@require_POST
@login_required
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    """Ask a job to stop (owners and operators): a queued job ends at once, a running one at its next step."""
    job = get_for_user(Job, request.user, Action.CHANGE, pk=job_id)
    if job.is_terminal:
        messages.info(request, f"{job} has already ended ({job.status}).")
    else:
        request_cancel(job)
        record(action="job.cancel_requested", actor=request.user, obj=job, request=request)
        messages.success(request, f"Cancel requested for {job}: it stops at its next step.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("job_detail", args=[job.pk])
    return redirect(target)
