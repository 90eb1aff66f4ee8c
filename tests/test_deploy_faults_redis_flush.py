"""Redis flushed mid-deploy: an open log page ends with every line and the final status.

A real deploy of the lab's sample project, started through the API, runs in a real worker while its deployment
page is open in Chromium and a websocket client follows the same job. During the image build the test flushes
its Redis database: the channel groups, the queued live messages and Celery's bookkeeping of the running task
are gone. The deploy still finishes, and both the page and the socket end with every stored line, once, and the
final status, within the live log's quiet period of the job's end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
import websockets
from django.conf import settings

from panel.accounts.services import create_token
from panel.jobs.models import JobLogLine
from tests.deploy_fixtures import api_deploy, log_text, wait_for_step
from tests.lab_helpers import wait_job
from tests.ws_helpers import flush_redis, lines_of, read_until, session_cookie, statuses_of, ws_url

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TERMINAL = ("succeeded", "failed", "canceled", "interrupted")


class SocketFollower(threading.Thread):
    """Follows a job's websocket from its first line until the final status, in a thread of its own."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        super().__init__(daemon=True)
        self.url, self.headers, self.timeout = url, headers, timeout
        self.frames: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.final_at: float | None = None

    def run(self) -> None:
        async def follow() -> None:
            async with websockets.connect(self.url, additional_headers=self.headers) as socket:
                self.frames = await read_until(
                    socket, lambda f, fs: f["type"] == "status" and f["status"] in TERMINAL, self.timeout
                )
                self.final_at = time.monotonic()

        try:
            asyncio.run(follow())
        except BaseException as error:  # reported by the test
            self.error = error


def test_it_ends_an_open_log_page_with_every_line_and_the_final_status_when_redis_is_flushed_mid_deploy(
    deploy_env: Any, live_server_url: str, users: dict[str, Any], browser: Any
) -> None:
    alice = users["alice"]
    _, token = create_token(user=alice, name="flush", scope="write")
    deployment = api_deploy(live_server_url, token, deploy_env)
    job = deployment.job

    follower = SocketFollower(
        ws_url(live_server_url, job.pk), {"Cookie": session_cookie(alice), "Origin": live_server_url}, timeout=600
    )
    follower.start()
    context = browser.new_context()
    context.add_cookies(
        [{"name": "sessionid", "value": session_cookie(alice).split("=", 1)[1], "url": live_server_url}]
    )
    page = context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(f"{live_server_url}/deployments/{deployment.pk}/")

    wait_for_step(deployment, "Build images", timeout=300)
    lines_before = JobLogLine.objects.filter(job=job).count()
    flush_redis()
    flushed_at = time.monotonic()

    job = wait_job(job, timeout=600)
    ended_at = time.monotonic()
    deployment.refresh_from_db()
    # The flush took Celery's record of the running task too; the worker finishes the deploy all the same.
    assert job.status == "succeeded", job.reason + log_text(deployment)[-3000:]
    assert deployment.status == "succeeded"
    stored = list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert stored == list(range(1, job.last_seq + 1))
    assert job.last_seq > lines_before > 0, "lines were written both before and after the flush"

    # The page: the final status and every stored line, once and in order, soon after the job ended.
    bound = settings.JOB_WS_QUIET_SECONDS + 5
    page.wait_for_function(
        "n => document.querySelector('[data-testid=job-status]').textContent.trim() === 'succeeded'"
        " && document.querySelectorAll('[data-joblog-output] .line').length >= n",
        arg=job.last_seq,
        timeout=bound * 1000,
    )
    shown = [
        int(s) for s in page.eval_on_selector_all("[data-joblog-output] .line", "ns => ns.map(n => n.dataset.seq)")
    ]
    assert shown == stored
    assert len(sockets) == 1, "the page's socket caught up by itself, it did not have to reconnect"
    page.screenshot(path="/tmp/panel-deploy-redis-flush.png", full_page=True)

    # The raw socket: the same, and the final status frame last, once.
    follower.join(timeout=bound)
    assert follower.error is None, follower.error
    assert lines_of(follower.frames) == stored
    assert [s for s in statuses_of(follower.frames) if s in TERMINAL] == ["succeeded"]
    assert follower.final_at is not None and follower.final_at - ended_at <= bound
    assert follower.final_at > flushed_at
