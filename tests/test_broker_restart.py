"""Redis restarts under running jobs: workers ride them out, with no supervisor, and jobs end truthfully.

The restarted Redis is the one at settings.REDIS_URL (in CI the redis-server of bin/test-services), started
again with the same flags, so it comes back empty, as a cache-only Redis does after a crash.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from deployments.models import Deployment
from panel.accounts.services import create_token
from panel.jobs.models import Job, JobLogLine
from panel.jobs.services import create_job
from tests.conftest import ManagedProcess
from tests.deploy_fixtures import health, log_text, wait_for_step
from tests.lab_helpers import wait_job
from tests.services import restart_redis

pytestmark = pytest.mark.django_db(transaction=True)


def api_post(url: str, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_survived(worker: ManagedProcess, pid: int) -> None:
    """The very process that ran before the restart still runs, and it reconnected rather than crashed."""
    assert worker.process is not None and worker.process.pid == pid
    assert worker.process.poll() is None, f"the {worker.name} worker exited:\n{worker.log_text()[-4000:]}"
    log = worker.log_text()
    assert "Unrecoverable error" not in log, log[-4000:]
    assert "Connection to broker lost" in log, "the restart was noticed"


def wait_reconnected(worker: ManagedProcess, connects_before: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while worker.log_text().count("Connected to redis") <= connects_before:
        assert worker.process is not None and worker.process.poll() is None, worker.log_text()[-4000:]
        assert time.monotonic() < deadline, f"the {worker.name} worker never reconnected:\n{worker.log_text()[-4000:]}"
        time.sleep(0.2)


@pytest.mark.exclusive
def test_it_keeps_running_a_job_when_redis_restarts_and_takes_the_next_one(
    jobs_worker: ManagedProcess, orgs: dict[str, Any]
) -> None:
    assert jobs_worker.process is not None
    pid, connects = jobs_worker.process.pid, jobs_worker.log_text().count("Connected to redis")
    job = create_job(kind="test_emit", organization=orgs["a"], params={"count": 60, "delay": 0.1})
    wait_job(job, statuses=("running",))
    time.sleep(1)
    restart_redis(down_for=2)
    job = wait_job(job, timeout=60)
    assert job.status == "succeeded", job.reason
    texts = list(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
    assert [t for t in texts if t.startswith("line ")] == [f"line {n}" for n in range(1, 61)]
    wait_reconnected(jobs_worker, connects)
    assert_survived(jobs_worker, pid)
    following = wait_job(create_job(kind="test_emit", organization=orgs["a"], params={"count": 3}), timeout=60)
    assert following.status == "succeeded", following.reason
    assert_survived(jobs_worker, pid)


@pytest.mark.exclusive
@pytest.mark.lab
def test_redis_restarted_mid_deploy_the_worker_lives_on_and_the_next_deploy_runs(
    deploy_env: Any, jobs_worker: ManagedProcess, monitoring_worker: ManagedProcess, live_server_url: str,
    lab1: Any, users: dict[str, Any],
) -> None:  # fmt: skip
    assert jobs_worker.process is not None and monitoring_worker.process is not None
    pids = {jobs_worker.name: jobs_worker.process.pid, monitoring_worker.name: monitoring_worker.process.pid}
    connects = jobs_worker.log_text().count("Connected to redis")
    _, token = create_token(user=users["alice"], name="restart", scope="write")
    url = f"{live_server_url}/api/v1/environments/{deploy_env.pk}/deploy/"

    code, body = api_post(url, token)
    assert code == 202, body
    first = Deployment.objects.get(pk=body["deployment"]["id"])
    wait_for_step(first, "Build images")
    restart_redis(down_for=2)
    started = time.monotonic()
    job = wait_job(first.job, timeout=300)
    # The worker never lost the job: it finishes it and says so, well before the reaper's bound.
    assert job.status == "succeeded", job.reason + log_text(first)[-3000:]
    assert time.monotonic() - started < 300
    first.refresh_from_db()
    assert first.status == "succeeded"
    deploy_env.refresh_from_db()
    assert deploy_env.current_deployment_id == first.pk
    assert health(lab1) == {"status": "pass"}

    wait_reconnected(jobs_worker, connects)
    code, body = api_post(url, token)
    assert code == 202, body
    second = Deployment.objects.get(pk=body["deployment"]["id"])
    job = wait_job(second.job, timeout=300)
    assert job.status == "succeeded", job.reason + log_text(second)[-3000:]
    assert health(lab1) == {"status": "pass"}
    assert_survived(jobs_worker, pids[jobs_worker.name])
    assert_survived(monitoring_worker, pids[monitoring_worker.name])
    assert Job.objects.filter(status__in=["queued", "running"]).count() == 0
