"""A live log never hangs: a Redis flush mid-job (groups and messages gone) or a dropped socket still ends with
every line, once, and the final status. Real Celery worker, uvicorn, websockets client and Chromium."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.conf import settings

from panel.jobs.choices import JobStatus
from panel.jobs.models import Job, JobLogLine
from panel.jobs.services import create_job
from tests.conftest import ManagedProcess, free_port, wait_for_port
from tests.lab_helpers import wait_job
from tests.ws_helpers import (
    flush_redis,
    lines_of,
    read_until,
    session_cookie,
    statuses_of,
    ws_url,
)

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = pytest.mark.django_db(transaction=True)

COUNT, DELAY = 93, 0.05


def test_it_ends_with_every_line_and_the_final_status_after_redis_is_flushed_mid_job(
    jobs_worker: Any, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    headers = {"Cookie": session_cookie(users["alice"]), "Origin": live_server_url}
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": COUNT, "delay": DELAY})
    bound = COUNT * DELAY + settings.JOB_WS_QUIET_SECONDS + 5

    async def follow() -> tuple[list[dict[str, Any]], float]:
        async with websockets.connect(ws_url(live_server_url, job.pk), additional_headers=headers) as socket:
            before = await read_until(socket, lambda f, fs: len(lines_of(fs)) >= 20)
            await asyncio.to_thread(flush_redis)
            flushed = time.monotonic()
            after = await read_until(socket, lambda f, fs: f["type"] == "status" and f["status"] != "running", bound)
            took = time.monotonic() - flushed
            # Nothing else follows the final status: no second status frame, no line sent again.
            with pytest.raises(TimeoutError):
                extra = await asyncio.wait_for(socket.recv(), timeout=settings.JOB_WS_QUIET_SECONDS + 1)
                after.append({"type": "unexpected", "raw": extra})
            return before + after, took

    frames, took = asyncio.run(follow())
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.reason
    stored = list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert stored == list(range(1, job.last_seq + 1)) and job.last_seq >= COUNT
    assert lines_of(frames) == stored, "every stored line exactly once, in order, on the one socket"
    assert [s for s in statuses_of(frames) if s != "running"] == ["succeeded"]
    assert frames[-1]["type"] == "status"
    assert took <= bound


def test_it_still_runs_the_flushed_job_to_its_end_in_the_worker(jobs_worker: Any, orgs: dict[str, Any]) -> None:
    """FLUSHDB also drops Celery's bookkeeping of the running task (its unacked entry): the job still ends."""
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 40, "delay": DELAY})
    wait_job(job, timeout=30, statuses=(JobStatus.RUNNING,))
    time.sleep(0.5)
    flush_redis()
    job = wait_job(job, timeout=30)
    assert job.status == JobStatus.SUCCEEDED, job.reason
    assert JobLogLine.objects.filter(job=job).count() == job.last_seq >= 40
    # The worker lives on and takes new jobs: Celery routes a task by its queue's name, which needs no binding
    # that the flush could have dropped.
    second = create_job(kind="test_emit", organization=orgs["a"], params={"count": 2})
    assert wait_job(second, timeout=30).status == JobStatus.SUCCEEDED
    assert jobs_worker.process is not None and jobs_worker.process.poll() is None


def page_seqs(page: Any) -> list[int]:
    return [
        int(seq) for seq in page.eval_on_selector_all("[data-joblog-output] .line", "ns => ns.map(n => n.dataset.seq)")
    ]


def open_job_page(browser: Any, base_url: str, user: Any, job: Job) -> tuple[Any, list[str]]:
    """The job's page in Chromium, signed in as ``user``; also returns the websocket URLs the page opens."""
    context = browser.new_context()
    context.add_cookies([{"name": "sessionid", "value": session_cookie(user).split("=", 1)[1], "url": base_url}])
    page = context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(f"{base_url}/jobs/{job.pk}/")
    return page, sockets


def wait_page_lines(page: Any, count: int, timeout: float = 30) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('[data-joblog-output] .line').length >= n", arg=count, timeout=timeout * 1000
    )


def wait_page_finished(page: Any, job: Job, timeout: float) -> None:
    """Wait until the page shows the final status and as many lines as the database holds."""
    page.wait_for_function(
        "n => document.querySelector('[data-testid=job-status]').textContent.trim() === 'succeeded'"
        " && document.querySelectorAll('[data-joblog-output] .line').length >= n",
        arg=job.last_seq,
        timeout=timeout * 1000,
    )


@pytest.mark.browser
def test_it_shows_every_line_and_the_final_status_on_the_page_after_a_redis_flush(
    jobs_worker: Any,
    live_server_url: str,
    users: dict[str, Any],
    orgs: dict[str, Any],
    browser: Any,
) -> None:
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": COUNT, "delay": DELAY})
    page, sockets = open_job_page(browser, live_server_url, users["alice"], job)
    wait_page_lines(page, 20)
    flush_redis()
    job = wait_job(job, timeout=30)
    assert job.status == JobStatus.SUCCEEDED, job.reason
    wait_page_finished(page, job, timeout=settings.JOB_WS_QUIET_SECONDS + 5)
    assert page_seqs(page) == list(range(1, job.last_seq + 1))
    assert len(sockets) == 1, "the socket that lost its group caught up by itself, without reconnecting"


@pytest.fixture
def own_panel(django_db_setup: Any, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A uvicorn of this test's own on a fixed port, which the test may kill and start again."""
    port = free_port()

    def start() -> ManagedProcess:
        argv = [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        proc = ManagedProcess("uvicorn-own", [*argv, "--log-level", "warning"], tmp_path / "uvicorn.log")
        proc.start()
        wait_for_port(port, proc)
        return proc

    procs = [start()]

    def restart(down_seconds: float) -> None:
        procs[-1].kill()
        time.sleep(down_seconds)
        procs.append(start())

    yield f"http://127.0.0.1:{port}", restart
    procs[-1].stop()


@pytest.mark.browser
def test_it_reconnects_from_its_last_line_when_the_socket_drops(
    jobs_worker: Any, own_panel: tuple[str, Any], users: dict[str, Any], orgs: dict[str, Any], browser: Any
) -> None:
    base_url, restart = own_panel
    # 400 lines at DELAY: 20 s, so that the job still runs when the server dies even on a loaded machine (checked).
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 400, "delay": DELAY})
    page, sockets = open_job_page(browser, base_url, users["alice"], job)
    wait_page_lines(page, 20)
    restart(down_seconds=1.5)  # the web server dies and comes back: the socket closes (1006)
    seen_before = len(page_seqs(page))
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING, "the job ended before the server died: the test would prove nothing"
    job = wait_job(job, timeout=60)
    assert job.status == JobStatus.SUCCEEDED, job.reason
    wait_page_finished(page, job, timeout=35)
    assert page_seqs(page) == list(range(1, job.last_seq + 1)), "every line once, in order, across the reconnect"
    assert len(sockets) >= 2
    resumed_after = int(sockets[-1].rsplit("after=", 1)[1])
    assert resumed_after >= seen_before > 0, "the new socket starts after the last line the page already had"
    assert page.locator("[data-joblog-connection]").text_content() == ""
