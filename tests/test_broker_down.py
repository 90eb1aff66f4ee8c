"""A deploy asked for while Redis is down: 503 with a clear message, and the environment stays free.

The panel runs as in production (uvicorn) against its own real Redis server, which the test shuts down.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from panel.accounts.services import create_token
from panel.jobs.models import Job
from tests.conftest import ManagedProcess, free_port, wait_for_port
from tests.services import start_redis, stop_redis

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def own_redis() -> Iterator[str]:
    url = f"redis://127.0.0.1:{free_port()}/0"
    start_redis(url)
    yield url
    stop_redis(url)


@pytest.fixture
def panel_on(own_redis: str, process_logs: Path, django_db_setup: Any) -> Iterator[str]:
    """uvicorn whose broker and channel layer are ``own_redis``."""
    port = free_port()
    proc = ManagedProcess(
        "uvicorn-own-redis",
        [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        process_logs / "uvicorn-own-redis.log",
        env={"REDIS_URL": own_redis, "CELERY_BROKER_URL": own_redis},
    )  # fmt: skip
    proc.start()
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def post(url: str, token: str) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_it_answers_503_and_holds_no_lock_when_redis_is_down(
    panel_on: str, own_redis: str, users: Any, inventory: Any
) -> None:
    environment = inventory["env_a"]
    _, token = create_token(user=users["olga"], name="deployer", scope="write")
    url = f"{panel_on}/api/v1/environments/{environment.pk}/deploy/"
    stop_redis(own_redis)
    for _ in range(2):  # the second request is not refused as busy: the first left no job holding the lock
        status, body = post(url, token)
        assert status == 503, body
        answer = json.loads(body)
        assert "message broker (Redis) is unreachable" in answer["detail"]
        job = Job.objects.get(pk=answer["job"])
        assert job.status == "failed" and "Nothing was started" in job.reason
    assert not Job.objects.filter(environment=environment, status__in=["queued", "running"]).exists()
    start_redis(own_redis)
    status, body = post(url, token)
    assert status == 202, body
    assert Job.objects.filter(environment=environment, status="queued").count() == 1


def test_it_says_so_on_the_page_when_redis_is_down(
    panel_on: str, own_redis: str, users: Any, inventory: Any, browser: Any
) -> None:
    from tests.test_browser_deploy import log_in

    environment = inventory["env_a"]
    page = browser.new_page()
    log_in(page, panel_on, "olga")
    page.goto(f"{panel_on}/environments/{environment.pk}/")
    stop_redis(own_redis)
    with page.expect_response(lambda response: "/deploy/" in response.url) as answer:
        page.get_by_role("button", name="Deploy", exact=True).click()
    assert answer.value.status == 503
    assert "message broker (Redis) is unreachable" in page.get_by_test_id("queue-unavailable").inner_text()
    assert not Job.objects.filter(environment=environment, status__in=["queued", "running"]).exists()
