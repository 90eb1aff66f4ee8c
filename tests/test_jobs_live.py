"""The job framework end to end: a real Celery worker runs jobs, uvicorn streams them over real websockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets
from django.db import connection
from django.test import Client

from panel.jobs.choices import JobStatus
from panel.jobs.models import Job, JobLogLine
from panel.jobs.services import create_job
from tests.lab_helpers import wait_job

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def ws_url(base: str, job_id: int, after: int = 0) -> str:
    return base.replace("http://", "ws://") + f"/ws/jobs/{job_id}/?after={after}"


def wait_status(job: Job, statuses: tuple[str, ...], timeout: float = 30) -> Job:
    return wait_job(job, timeout=timeout, statuses=statuses)


async def read_until(socket: Any, stop: Any, timeout: float = 30) -> list[dict[str, Any]]:
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=deadline - time.monotonic()))
        frames.append(frame)
        if stop(frame, frames):
            return frames
    raise AssertionError("timed out")


def status_of(job_id: int) -> str:
    """Read a job's status from another thread, closing that thread's connection afterwards."""
    try:
        return Job.objects.get(pk=job_id).status
    finally:
        connection.close()


def lines_of(frames: list[dict[str, Any]]) -> list[int]:
    return [line["seq"] for frame in frames if frame["type"] == "lines" for line in frame["lines"]]


def test_it_runs_a_job_in_a_real_worker_and_records_steps(jobs_worker: Any, orgs: dict[str, Any]) -> None:
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 30, "steps": 3})
    job = wait_status(job, (JobStatus.SUCCEEDED, JobStatus.FAILED))
    assert job.status == JobStatus.SUCCEEDED, job.reason
    texts = list(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
    assert [t for t in texts if t.startswith("line ")] == [f"line {n}" for n in range(1, 31)]
    assert list(JobLogLine.objects.filter(job=job).values_list("seq", flat=True)) == list(range(1, len(texts) + 1))
    assert [s["name"] for s in job.result["steps"]] == ["step 1", "step 2", "step 3"]
    assert all(s["status"] == "succeeded" and s["seconds"] >= 0 for s in job.result["steps"])
    assert job.started_at and job.finished_at and job.worker


def test_it_ends_a_failed_job_with_its_reason(jobs_worker: Any, orgs: dict[str, Any]) -> None:
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 2, "fail": True})
    job = wait_status(job, (JobStatus.SUCCEEDED, JobStatus.FAILED))
    assert job.status == JobStatus.FAILED
    assert job.reason == "Failed on purpose."


def test_it_streams_every_line_exactly_once_across_a_reconnect(
    jobs_worker: Any, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    cookie = session_cookie(users["alice"])
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 400, "delay": 0.01})
    headers = {"Cookie": cookie, "Origin": live_server_url}

    async def follow() -> list[int]:
        async with websockets.connect(ws_url(live_server_url, job.pk), additional_headers=headers) as socket:
            first = await read_until(socket, lambda f, fs: len(lines_of(fs)) >= 50)
        seen = lines_of(first)
        await asyncio.sleep(1.0)  # lines keep coming while we are away
        after = seen[-1]
        async with websockets.connect(ws_url(live_server_url, job.pk, after), additional_headers=headers) as socket:
            rest = await read_until(socket, lambda f, fs: f["type"] == "status", timeout=60)
        assert rest[-1]["status"] == "succeeded"
        return seen + lines_of(rest)

    seqs = asyncio.run(follow())
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert seqs == list(range(1, job.last_seq + 1)), "every line exactly once, in order"
    assert job.last_seq >= 400


def test_it_pushes_lines_live_while_the_job_runs(
    jobs_worker: Any, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    cookie = session_cookie(users["alice"])
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 40, "delay": 0.05})
    headers = {"Cookie": cookie, "Origin": live_server_url}

    async def first_line_while_running() -> str:
        async with websockets.connect(ws_url(live_server_url, job.pk), additional_headers=headers) as socket:
            await read_until(socket, lambda f, fs: f["type"] == "lines")
            return await asyncio.to_thread(status_of, job.pk)

    assert asyncio.run(first_line_while_running()) == JobStatus.RUNNING
    wait_status(job, (JobStatus.SUCCEEDED,))


def test_it_pushes_progress_live_and_the_page_shows_the_last(
    jobs_worker: Any, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any], settings: Any
) -> None:
    cookie = session_cookie(users["alice"])
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 40, "delay": 0.05, "progress": True})
    headers = {"Cookie": cookie, "Origin": live_server_url}

    async def progress_frames() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(live_server_url, job.pk), additional_headers=headers) as socket:
            frames = await read_until(socket, lambda f, fs: f["type"] == "status" and f["status"] == "succeeded")
            return [f["progress"] for f in frames if f["type"] == "progress"]

    reports = asyncio.run(progress_frames())
    # Throttled (JOB_PROGRESS_SECONDS = 0.5 s over a 2 s job): a few reports, growing, the last one complete.
    assert 2 <= len(reports) < 40, reports
    assert [r["done"] for r in reports] == sorted(r["done"] for r in reports)
    assert all(r["label"] == "Emitting lines" and r["total"] == 40000 for r in reports)
    assert reports[-1]["done"] == 40000
    job.refresh_from_db()
    assert job.progress == {"label": "Emitting lines", "done": 40000, "total": 40000}
    client = Client()
    client.force_login(users["alice"])
    page = client.get(f"/jobs/{job.pk}/").content.decode().replace("\xa0", " ")
    assert "Emitting lines: 39.1 KB of 39.1 KB (100 %)" in page


@pytest.mark.parametrize("who", ["anonymous", "foreign-origin", "other-org", "customer"])
def test_it_closes_sockets_that_may_not_see_the_job_before_any_data(
    who: str, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    job = Job.objects.create(kind="test_emit", organization=orgs["a1"], status=JobStatus.SUCCEEDED)
    JobLogLine.objects.create(job=job, seq=1, text="secret-ish output")
    headers = {"Origin": live_server_url}
    if who == "foreign-origin":
        headers = {"Origin": "http://evil.example", "Cookie": session_cookie(users["alice"])}
    elif who == "other-org":
        headers["Cookie"] = session_cookie(users["bob"])
    elif who == "customer":
        headers["Cookie"] = session_cookie(users["carol"])

    async def attempt() -> list[str]:
        received = []
        try:
            async with websockets.connect(ws_url(live_server_url, job.pk), additional_headers=headers) as socket:
                while True:
                    received.append(await asyncio.wait_for(socket.recv(), timeout=5))
        except (websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed):
            return received

    assert asyncio.run(attempt()) == []


def test_it_lets_the_owner_follow_a_finished_job(
    live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    job = Job.objects.create(kind="test_emit", organization=orgs["a1"], status=JobStatus.SUCCEEDED, last_seq=2)
    JobLogLine.objects.bulk_create([JobLogLine(job=job, seq=n, text=f"l{n}") for n in (1, 2)])
    headers = {"Origin": live_server_url, "Cookie": session_cookie(users["alice"])}

    async def attempt() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(live_server_url, job.pk), additional_headers=headers) as socket:
            return await read_until(socket, lambda f, fs: f["type"] == "status")

    frames = asyncio.run(attempt())
    assert lines_of(frames) == [1, 2]
    assert frames[-1]["status"] == "succeeded"


def test_it_interrupts_a_job_whose_worker_was_killed(
    jobs_worker: Any, monitoring_worker: Any, orgs: dict[str, Any], settings: Any
) -> None:
    job = create_job(
        kind="test_emit", organization=orgs["a"], params={"count": 1000, "delay": 0.05}, lock_key="environment:1"
    )
    wait_status(job, (JobStatus.RUNNING,))
    time.sleep(0.5)
    killed_at = time.monotonic()
    jobs_worker.kill()  # SIGKILL to the worker's whole process group
    limit = settings.JOB_STALE_AFTER + 2 * settings.JOB_REAPER_INTERVAL + 5
    job = wait_status(job, (JobStatus.INTERRUPTED,), timeout=limit)
    assert time.monotonic() - killed_at <= limit
    assert "stopped responding" in job.reason and "not resumed" in job.reason
    # The target is free again: a new job may take the same lock.
    second = create_job(kind="test_emit", organization=orgs["a"], params={"count": 1}, lock_key="environment:1")
    assert second.status == JobStatus.QUEUED
    # The killed job is never resumed behind the user's back, even after a new worker starts.
    jobs_worker.start()
    wait_status(second, (JobStatus.SUCCEEDED,), timeout=60)
    job.refresh_from_db()
    assert job.status == JobStatus.INTERRUPTED
