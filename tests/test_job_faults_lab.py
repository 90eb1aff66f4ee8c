"""Deploys through the API with real workers on the lab, broken in the middle: each ends truthfully and bounded.

- PostgreSQL goes away for longer than the job's lease in the middle of a build: the job stops at once, the
  server ends what it started, no log line is lost, the reason says the database was unreachable, and the
  environment needs attention until the next deploy proves it runs.
- The worker is killed during the automatic rollback: the environment shows *needs attention* (API and page,
  staff and customers), never "running".
- The database lock is deleted while a deploy runs: a second deploy still waits for the first one's lock on the
  server, so the two never overlap there.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
from django.db import connections

from deployments.services import start_deploy
from panel.accounts.services import create_token
from panel.jobs.models import Job, JobLogLine
from tests.deploy_fixtures import KEY, api_call, api_deploy, deploy, health, log_text, wait_for_step
from tests.lab_helpers import wait_job
from tests.services import start_postgres, stop_postgres

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def slow_build(lab_sample: Any, marker: str, ticks: int = 60) -> str:
    """A commit whose image build prints numbered lines for a while (``marker`` names its process on the host)."""
    dockerfile = lab_sample.sample_file("odoo/Dockerfile") + (
        f'RUN for i in $(seq 1 {ticks}); do echo "{marker} $i"; sleep 0.5; done\n'
    )
    return lab_sample.commit_to_sample({"odoo/Dockerfile": dockerfile}, "a slow build step")


def wait_for_line(job: Job, pattern: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not JobLogLine.objects.filter(job=job, text__regex=pattern).exists():
        if time.monotonic() > deadline:
            job.refresh_from_db()
            tail = "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))[-3000:]
            raise AssertionError(f"job {job.pk} ({job.status}: {job.reason}) never logged {pattern!r}:\n{tail}")
        time.sleep(0.2)


def processes_of(host: Any, needle: str) -> list[str]:
    """Command lines of every process on the lab machine that mention ``needle`` (build steps run in dockerd)."""
    result = host.ssh("ps", "-eo", "args", check=True)
    return [line for line in result.stdout.splitlines() if needle in line and "ps -eo" not in line]


def tagged_processes(host: Any, job: Job) -> list[str]:
    """Processes of the SSH user that carry the job's tag."""
    script = f"grep -lzF DOODBA_PANEL_JOB={job.pk}- /proc/[0-9]*/environ 2>/dev/null || true"
    return host.ssh("sh", "-c", script, check=True).stdout.split()


def assert_lines_complete(job: Job, marker: str) -> int:
    """Sequence numbers 1..last_seq with no gap, and the build's numbered lines 1..n with none missing."""
    job.refresh_from_db()
    seqs = list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, job.last_seq + 1))
    ticks = [
        int(match.group(1))
        for text in JobLogLine.objects.filter(job=job, text__contains=marker).values_list("text", flat=True)
        if (match := re.search(rf"{marker} (\d+)\b", text)) and "RUN" not in text and "for i" not in text
    ]
    assert ticks, "the build printed nothing"
    assert sorted(set(ticks)) == list(range(1, max(ticks) + 1)), ticks
    return max(ticks)


@pytest.mark.exclusive
def test_it_stops_a_deploy_whose_database_went_away_and_leaves_nothing_running(
    deploy_env, jobs_worker, monitoring_worker, live_server_url, lab1, lab_sample, users
) -> None:
    _, token = create_token(user=users["alice"], name="faults", scope="write")
    marker = f"tick-{uuid.uuid4().hex[:8]}"
    slow_build(lab_sample, marker)
    first = api_deploy(live_server_url, token, deploy_env)
    wait_for_line(first.job, rf"{marker} 4( |$)")
    stop_postgres()
    try:
        # Longer than the lease (3 s in the tests): the job must stop on its own, without the database.
        time.sleep(8)
        assert processes_of(lab1, marker) == [], "the build kept running after the job lost its lease"
    finally:
        start_postgres()
        connections.close_all()
    job = wait_job(first.job, timeout=150)
    assert job.status == "interrupted", job.reason
    assert "database was unreachable" in job.reason
    reached = assert_lines_complete(job, marker)
    assert reached < 60, "the build ran to its end"
    assert tagged_processes(lab1, job) == []
    # The environment says so until a deploy proves otherwise.
    status, body = api_call(live_server_url, token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert status == 200 and body["state"] == "needs attention", body
    assert f"#{job.pk}" in body["state_detail"]
    assert processes_of(lab1, marker) == []
    lab_sample.reset_sample()
    second = api_deploy(live_server_url, token, deploy_env)
    wait_job(second.job, timeout=300)
    second.job.refresh_from_db()
    assert second.job.status == "succeeded", second.job.reason + log_text(second)[-3000:]
    assert health(lab1) == {"status": "pass"}
    status, body = api_call(live_server_url, token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert body["state"] == "running", body


def test_it_shows_needs_attention_when_the_worker_dies_during_the_rollback(
    deploy_env, jobs_worker, monitoring_worker, live_server_url, lab1, lab_sample, users, client
) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    prod = lab_sample.sample_file("prod.yaml").replace(
        "    restart: unless-stopped\n    hostname:",
        '    restart: unless-stopped\n    command: ["sleep", "infinity"]\n    hostname:',
        1,
    )
    lab_sample.commit_to_sample({"prod.yaml": prod}, "odoo never answers")
    _, token = create_token(user=users["alice"], name="faults", scope="write")
    second = api_deploy(live_server_url, token, deploy_env)
    wait_for_step(second, "Rollback: Start", timeout=240)
    jobs_worker.kill()
    job = wait_job(second.job, timeout=60, statuses=("interrupted",))
    assert "stopped responding" in job.reason
    assert tagged_processes(lab1, job) == [], "the rollback's commands outlived its connection"
    _, customer_token = create_token(user=users["carol"], name="status", scope="read")
    for who, key in (("staff", token), ("customer", customer_token)):
        status, body = api_call(live_server_url, key, "GET", f"/api/v1/environments/{deploy_env.pk}/")
        assert status == 200, body
        assert body["state"] == "needs attention", (who, body)
    status, staff = api_call(live_server_url, token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert f"Deploy #{job.pk} did not finish cleanly" in staff["state_detail"]
    status, customer = api_call(live_server_url, customer_token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert str(job.pk) not in customer["state_detail"] and "lab1" not in customer["state_detail"]
    for user in (users["alice"], users["carol"]):
        client.force_login(user)
        page = client.get(f"/environments/{deploy_env.pk}/").content.decode()
        state = page.partition('data-testid="environment-state">')[2].partition("</dd>")[0]
        badges = [label.strip() for label in re.findall(r">([^<>]+)</span>", state)]
        assert badges == ["needs attention"], state
        assert 'data-testid="state-detail"' in page
    # A good deploy proves it runs again.
    jobs_worker.start()
    lab_sample.reset_sample()
    third = deploy(deploy_env, users["alice"], ref=lab_sample.sample_initial_sha)
    assert third.job.status == "succeeded", third.job.reason
    status, body = api_call(live_server_url, token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert body["state"] == "running", body


def test_two_deploys_never_overlap_on_the_server_without_the_database_lock(
    deploy_env, jobs_worker, lab1, lab_sample, users
) -> None:
    marker = f"tick-{uuid.uuid4().hex[:8]}"
    slow_build(lab_sample, marker, ticks=16)
    first = start_deploy(environment=deploy_env, actor=users["alice"])
    wait_for_line(first.job, rf"{marker} 2( |$)")
    # The database lock is gone (a bug, a manual edit): the database lets a second deploy start.
    Job.objects.filter(pk=first.job.pk).update(lock_key=None)
    deploy_started = start_deploy(environment=deploy_env, actor=users["alice"])
    wait_job(first.job, timeout=300)
    wait_job(deploy_started.job, timeout=300)
    first.job.refresh_from_db()
    deploy_started.job.refresh_from_db()
    assert first.job.status == "succeeded", first.job.reason
    assert deploy_started.job.status == "succeeded", deploy_started.job.reason
    second_lines = JobLogLine.objects.filter(job=deploy_started.job)
    assert second_lines.filter(text__contains=f"for job #{first.job.pk} to release").exists()
    held_at = second_lines.get(text__startswith="Holding this environment's lock").ts
    first_remote = JobLogLine.objects.filter(job=first.job, stream__in=["out", "err"])
    assert first_remote.exists()
    assert held_at >= max(first_remote.values_list("ts", flat=True)), "the second deploy ran while the first did"
    second_remote = second_lines.filter(stream__in=["out", "err"])
    assert min(second_remote.values_list("ts", flat=True)) >= held_at
    assert health(lab1) == {"status": "pass"}


def test_a_check_proves_what_runs_after_an_interrupted_deploy(
    deploy_env, jobs_worker, monitoring_worker, live_server_url, lab1, lab_sample, users
) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    _, token = create_token(user=users["olga"], name="checks", scope="write")
    marker = f"tick-{uuid.uuid4().hex[:8]}"
    slow_build(lab_sample, marker)
    second = api_deploy(live_server_url, token, deploy_env)
    wait_for_line(second.job, rf"{marker} 2( |$)")
    jobs_worker.kill()
    wait_job(second.job, timeout=60, statuses=("interrupted",))
    jobs_worker.start()
    status, body = api_call(live_server_url, token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert body["state"] == "needs attention", body
    # Odoo is down: the check says so and proves nothing.
    lab1.docker("stop", f"{KEY}-odoo-1", check=True)
    status, body = api_call(live_server_url, token, "POST", f"/api/v1/environments/{deploy_env.pk}/check/")
    assert status == 202, body
    check = wait_job(Job.objects.get(pk=body["job"]["id"]), timeout=120)
    assert check.status == "failed" and "Not running: odoo (exited)" in check.reason, check.reason
    status, body = api_call(live_server_url, token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert body["state"] == "needs attention", body
    # Odoo runs the first deployment's image again: the check proves it.
    lab1.docker("start", f"{KEY}-odoo-1", check=True)
    deadline = time.monotonic() + 60
    while True:
        status, body = api_call(live_server_url, token, "POST", f"/api/v1/environments/{deploy_env.pk}/check/")
        check = wait_job(Job.objects.get(pk=body["job"]["id"]), timeout=120)
        if check.status == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(2)  # Odoo still starting
    assert check.status == "succeeded", check.reason
    assert check.result["deployment"] == first.pk
    status, body = api_call(live_server_url, token, "GET", f"/api/v1/environments/{deploy_env.pk}/")
    assert body["state"] == "running" and body["current_deployment"]["id"] == first.pk, body
