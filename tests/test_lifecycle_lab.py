"""Lifecycle on the lab (issue 10, must show "Lifecycle"): Stop stops every container and the page says stopped,
Start brings it back healthy, Restart odoo restarts only odoo, Destroy removes the containers (and the volumes
only when asked) and frees the environment's disk; monitoring does not alert an environment stopped on purpose.

The environment is a compose project of the Odoo stand-in and the lab's PostgreSQL, checked out where a deploy
puts it (``~/doodba-panel/<compose project>/src/prod.yaml`` and the panel's override), with an image tag of the
kind the panel builds (``<compose project>-odoo:panel-1``), so the real jobs act on it through their usual
commands. Everything is checked on the host with the docker CLI (compose labels).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Playwright's sync API (the browser test) runs an event loop in this thread; Django's ORM refuses to run in one
# unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from django.conf import settings
from django.test import Client

from deployments.lifecycle import start_lifecycle
from deployments.models import Deployment
from monitoring.models import EnvironmentHealth, HealthState, Incident
from monitoring.poller import poll_server
from panel.accounts.models import AuditEvent
from panel.inventory.choices import EnvironmentState, Lifecycle
from panel.inventory.models import Environment, Project
from panel.inventory.services import environment_state
from panel.jobs.models import Job, JobLogLine
from panel.jobs.services import reap_stale_jobs
from tests.lab.lab import POSTGRES_IMAGE, LabHost
from tests.lab_helpers import add_lab_server, wait_job
from tests.monitoring_fixtures import ODOO_IMAGE

pytestmark = pytest.mark.lab

KEY = f"lc{os.getpid()}-16-0-prod"
PANEL_IMAGE = f"{KEY}-odoo:panel-1"
DIRECTORY = f"doodba-panel/{KEY}"
PROD_YAML = f"""\
services:
  odoo:
    image: {ODOO_IMAGE}
    entrypoint: ["/opt/odoo/common/entrypoint"]
    command: ["odoo", "-i", "base"]
    environment:
      PGHOST: db
      PGUSER: odoo
      PGPASSWORD: lifecycle-lab
      PGDATABASE: prod
      PROXY_MODE: "true"
    depends_on: [db]
    restart: unless-stopped
  db:
    image: {POSTGRES_IMAGE}
    environment:
      POSTGRES_USER: odoo
      POSTGRES_PASSWORD: lifecycle-lab
      POSTGRES_DB: prod
    volumes:
      - db:/var/lib/postgresql/data
    restart: unless-stopped
volumes:
  db: {{}}
"""
OVERRIDE = json.dumps({"services": {"odoo": {"image": PANEL_IMAGE, "labels": {"panel-test.lifecycle": "1"}},
                                    "db": {"labels": {"panel-test.lifecycle": "1"}}}})  # fmt: skip
COMPOSE = ["docker", "compose", "-p", KEY, "-f", f"{DIRECTORY}/src/prod.yaml",
           "-f", f"{DIRECTORY}/src/docker-compose.panel.yaml"]  # fmt: skip


def containers(host: LabHost) -> dict[str, dict[str, str]]:
    """Every container of the project on the host, by compose labels: service → state and start time."""
    ids = host.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={KEY}", check=False).stdout.split()
    if not ids:
        return {}
    fmt = '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{.State.StartedAt}}'
    found: dict[str, dict[str, str]] = {}
    for line in host.docker("inspect", "--format", fmt, *ids).stdout.splitlines():
        service, state, started = line.split()
        found[service] = {"state": state, "started": started}
    return found


def volumes(host: LabHost) -> list[str]:
    result = host.docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={KEY}", check=False)
    return result.stdout.split()


def odoo_health(host: LabHost) -> bool:
    result = host.ssh(*COMPOSE, "exec", "-T", "odoo", "curl", "-fsS", "--max-time", "3",
                      "http://localhost:8069/web/health", timeout=30)  # fmt: skip
    return result.returncode == 0 and '"pass"' in result.stdout


def bring_up(host: LabHost) -> None:
    """Check the project out where a deploy would and start it (as a deploy leaves it)."""
    script = ('mkdir -p "$1/src" && printf %s "$2" >"$1/src/prod.yaml" && '
              'printf %s "$3" >"$1/src/docker-compose.panel.yaml" && mkdir -p "$1/snapshots" && '
              'head -c 100000 /dev/zero >"$1/snapshots/deployment-1.dump"')  # fmt: skip
    host.ssh("sh", "-c", script, "sh", DIRECTORY, PROD_YAML, OVERRIDE, check=True)
    host.docker("tag", ODOO_IMAGE, PANEL_IMAGE)
    result = host.ssh(*COMPOSE, "up", "-d", timeout=300)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 120
    while not odoo_health(host):
        assert time.monotonic() < deadline, "the stand-in never answered /web/health"
        time.sleep(1)


def take_down(host: LabHost) -> None:
    host.docker("compose", "-p", KEY, "down", "-v", "--remove-orphans", timeout=300, check=False)
    host.docker("volume", "rm", "-f", f"{KEY}_db", check=False)
    host.docker("image", "rm", PANEL_IMAGE, check=False)
    host.ssh("rm", "-rf", "--", DIRECTORY)


@pytest.fixture
def lifecycle_env(
    jobs_worker: Any, lab1: LabHost, orgs: dict[str, Any], users: dict[str, Any]
) -> Iterator[Environment]:
    take_down(lab1)
    bring_up(lab1)
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    project = Project.objects.create(
        organization=orgs["a1"], name="Lifecycle", slug="lifecycle", git_url="/srv/git/lifecycle.git",
        odoo_version="16.0",
    )  # fmt: skip
    environment = Environment.objects.create(
        project=project, server=server, name="prod", kind="production", compose_files=["prod.yaml"],
        compose_project=KEY,
    )  # fmt: skip
    job = Job.objects.create(kind="deploy", organization=orgs["a1"], environment=environment, status="succeeded")
    deployment = Deployment.objects.create(
        environment=environment, job=job, ref="main", commit="a" * 40, commit_subject="Stand-in", status="succeeded"
    )
    Environment.objects.filter(pk=environment.pk).update(current_deployment=deployment)
    environment.refresh_from_db()
    yield environment
    take_down(lab1)


def run(environment: Environment, actor: Any, action: str, timeout: float = 120, **options: Any) -> Job:
    job = start_lifecycle(environment=environment, actor=actor, action=action, **options)
    wait_job(job, timeout=timeout)
    log = "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
    assert job.status == "succeeded", f"{job.reason}\n{log}"
    environment.refresh_from_db()
    return job


def page_state(environment: Environment, user: Any) -> str:
    client = Client()
    client.force_login(user)
    page = client.get(f"/environments/{environment.pk}/").content.decode()
    start = page.index('data-testid="environment-state"')
    return page[start : start + 400]


def test_stop_start_restart(lifecycle_env: Environment, lab1: LabHost, users: dict[str, Any]) -> None:
    alice = users["alice"]
    environment = lifecycle_env
    assert {c["state"] for c in containers(lab1).values()} == {"running"}

    # Stop: every container stopped on the host, the page and the API say stopped; monitoring does not alert.
    job = run(environment, alice, "stop", confirm="prod")
    found = containers(lab1)
    assert set(found) == {"odoo", "db"} and {c["state"] for c in found.values()} == {"exited"}, found
    assert environment.lifecycle == Lifecycle.STOPPED
    assert environment.lifecycle_facts["containers"] == {"db": "exited", "odoo": "exited"}
    assert environment_state(environment).code == EnvironmentState.STOPPED
    assert ">stopped<" in page_state(environment, alice)
    assert AuditEvent.objects.filter(action="environment.stop", object_id=str(environment.pk)).exists()
    poll_server(environment.server_id, with_odoo=False)
    health = EnvironmentHealth.objects.get(environment=environment)
    assert health.state == HealthState.MAINTENANCE and "Stopped on purpose" in health.message, health.message
    assert not Incident.objects.filter(environment=environment).exists()

    # Start: everything runs again and Odoo answers; the environment is running.
    job = run(environment, alice, "start")
    found = containers(lab1)
    assert {c["state"] for c in found.values()} == {"running"}, found
    assert odoo_health(lab1)
    assert environment.lifecycle == Lifecycle.RUNNING
    assert environment_state(environment).code == EnvironmentState.RUNNING
    assert "Odoo answers /web/health: pass" in "\n".join(
        JobLogLine.objects.filter(job=job).values_list("text", flat=True)
    )
    poll_server(environment.server_id, with_odoo=False)
    assert EnvironmentHealth.objects.get(environment=environment).state == HealthState.UP

    # Restart odoo: only odoo's container starts anew.
    before = containers(lab1)
    time.sleep(1.1)
    run(environment, alice, "restart", service="odoo", confirm="prod")
    after = containers(lab1)
    assert after["odoo"]["started"] != before["odoo"]["started"]
    assert after["db"]["started"] == before["db"]["started"]
    assert {c["state"] for c in after.values()} == {"running"}

    # Stopping one service: the environment shows which, and Start of that service brings it back.
    run(environment, alice, "stop", service="odoo", confirm="prod")
    found = containers(lab1)
    assert found["odoo"]["state"] == "exited" and found["db"]["state"] == "running"
    assert environment_state(environment).label == "stopped: odoo"
    run(environment, alice, "start", service="odoo")
    assert environment_state(environment).code == EnvironmentState.RUNNING


def test_destroy_keeps_volumes_unless_asked(lifecycle_env: Environment, lab1: LabHost, users: dict[str, Any]) -> None:
    alice = users["alice"]
    environment = lifecycle_env
    assert volumes(lab1) == [f"{KEY}_db"]

    job = run(environment, alice, "destroy", confirm="prod")
    assert containers(lab1) == {}
    assert volumes(lab1) == [f"{KEY}_db"], "the volumes stay unless asked"
    assert lab1.docker("image", "inspect", PANEL_IMAGE, check=False).returncode != 0, "the panel's image tag is gone"
    assert lab1.docker("image", "inspect", ODOO_IMAGE, check=False).returncode == 0, "a shared image stays"
    listing = lab1.ssh("ls", "-A", DIRECTORY).stdout.split()
    assert "src" not in listing and "snapshots" not in listing, listing
    assert environment.lifecycle == Lifecycle.DESTROYED and environment.current_deployment is None
    assert environment_state(environment).code == EnvironmentState.DESTROYED
    assert environment.lifecycle_facts["volumes_kept"] == [f"{KEY}_db"]
    assert job.result["images_removed"] == [PANEL_IMAGE]
    assert ">destroyed<" in page_state(environment, alice)

    # Up again (as a new deploy would), then destroyed with its volumes.
    bring_up(lab1)
    Environment.objects.filter(pk=environment.pk).update(lifecycle="")
    run(environment, alice, "destroy", confirm="prod", volumes=True)
    assert containers(lab1) == {} and volumes(lab1) == []
    assert environment.lifecycle_facts["volumes_removed"] == [f"{KEY}_db"]

    # Now it can leave the panel as destroyed; the audit entry says what the destroy removed.
    client = Client()
    client.force_login(alice)
    response = client.post(f"/environments/{environment.pk}/delete/", {"choice": "destroyed"})
    assert response.status_code == 302
    assert not Environment.objects.filter(pk=environment.pk).exists()
    event = AuditEvent.objects.get(action="environment.deleted", object_id=str(environment.pk))
    assert event.detail["choice"] == "destroyed" and event.detail["destroyed"]["volumes_removed"] == [f"{KEY}_db"]


def test_leave_running_records_what_was_left(lifecycle_env: Environment, lab1: LabHost, users: dict[str, Any]) -> None:
    client = Client()
    client.force_login(users["alice"])
    environment = lifecycle_env
    # Without a choice: refused, nothing removed.
    assert client.post(f"/environments/{environment.pk}/delete/", {}).status_code == 400
    assert client.delete(f"/api/v1/environments/{environment.pk}/").status_code == 400
    # "destroyed" for an environment that runs: refused.
    assert client.delete(f"/api/v1/environments/{environment.pk}/?choice=destroyed").status_code == 400
    assert Environment.objects.filter(pk=environment.pk).exists()
    response = client.delete(f"/api/v1/environments/{environment.pk}/?choice=leave_running")
    assert response.status_code == 200, response.content
    assert not Environment.objects.filter(pk=environment.pk).exists()
    left = AuditEvent.objects.get(action="environment.deleted", object_id=str(environment.pk)).detail["left"]
    assert left["compose_project"] == KEY
    assert sorted(c["state"] for c in left["containers"]) == ["running", "running"]
    assert left["volumes"] == [f"{KEY}_db"]
    assert {c["state"] for c in containers(lab1).values()} == {"running"}, "leaving it running touched nothing"


@pytest.mark.browser
def test_buttons_in_the_browser(
    live_server_url: str, lifecycle_env: Environment, lab1: LabHost, users: dict[str, Any], browser: Any
) -> None:
    """Stop a production environment from its page (typed name), see it stopped; Start it, see it running."""
    from playwright.sync_api import expect

    from tests.conftest import PASSWORD

    environment = lifecycle_env
    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{live_server_url}/login/")
    page.locator("#id_username").fill("alice")
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server_url}/dashboard/")
    page.goto(f"{live_server_url}/environments/{environment.pk}/")
    stop = page.get_by_test_id("stop-form")
    stop.get_by_role("button", name="Stop").click()  # the typed name is required: the browser refuses the form
    assert page.url.endswith(f"/environments/{environment.pk}/")
    assert not Job.objects.filter(environment=environment, kind="stop").exists()
    stop.locator("input[name=confirm]").fill("prod")
    stop.get_by_role("button", name="Stop").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    wait_job(Job.objects.get(environment=environment, kind="stop"), timeout=120)
    assert {c["state"] for c in containers(lab1).values()} == {"exited"}
    page.goto(f"{live_server_url}/environments/{environment.pk}/")
    expect(page.get_by_test_id("environment-state")).to_have_text(re.compile(r"^\s*stopped\s*$"))
    page.get_by_test_id("start-form").get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job = wait_job(Job.objects.get(environment=environment, kind="start"), timeout=120)
    assert job.status == "succeeded", job.reason
    assert odoo_health(lab1)
    page.goto(f"{live_server_url}/environments/{environment.pk}/")
    expect(page.get_by_test_id("environment-state")).to_have_text(re.compile(r"running"))
    page.close()


SLOW_YAML = f"""\
services:
  slow:
    image: {POSTGRES_IMAGE}
    entrypoint: ["sleep", "infinity"]
"""


def tagged_processes(host: LabHost, job: Job) -> list[str]:
    """Processes of the SSH user that carry the job's tag."""
    script = f"grep -lzF DOODBA_PANEL_JOB={job.pk}- /proc/[0-9]*/environ 2>/dev/null || true"
    return host.ssh("sh", "-c", script, check=True).stdout.split()


def test_worker_killed_during_a_stop(
    lifecycle_env: Environment, lab1: LabHost, users: dict[str, Any], jobs_worker: Any
) -> None:
    """The worker dies while ``compose stop`` waits for a container that ignores SIGTERM: the job ends
    interrupted, nothing it started runs on on the host, the environment needs attention (what runs is not known),
    and a Start proves it runs again."""
    environment = lifecycle_env
    lab1.ssh("sh", "-c", 'printf %s "$2" >"$1/src/slow.yaml"', "sh", DIRECTORY, SLOW_YAML, check=True)
    Environment.objects.filter(pk=environment.pk).update(compose_files=["prod.yaml", "slow.yaml"])
    environment.refresh_from_db()
    up = lab1.ssh(*COMPOSE[:-2], "-f", f"{DIRECTORY}/src/slow.yaml", *COMPOSE[-2:], "up", "-d", timeout=300)
    assert up.returncode == 0, up.stderr
    assert containers(lab1)["slow"]["state"] == "running"

    job = start_lifecycle(environment=environment, actor=users["alice"], action="stop", confirm="prod")
    deadline = time.monotonic() + 60
    while not JobLogLine.objects.filter(job=job, text__startswith="▶ Stop every service").exists():
        assert time.monotonic() < deadline, "the stop never started"
        time.sleep(0.1)
    time.sleep(2)  # compose stop waits for the container that ignores SIGTERM (LIFECYCLE_STOP_TIMEOUT: 30 s)
    jobs_worker.kill()
    deadline = time.monotonic() + 60
    while job.status != "interrupted":  # the reaper (a beat task) ends a job whose lease ran out
        assert time.monotonic() < deadline, f"job {job.pk} still {job.status}"
        reap_stale_jobs()
        time.sleep(0.5)
        job.refresh_from_db()
    assert "stopped responding" in job.reason, job.reason
    assert tagged_processes(lab1, job) == [], "the stop's commands outlived its connection"
    environment.refresh_from_db()
    state = environment_state(environment)
    assert state.code == EnvironmentState.NEEDS_ATTENTION and f"Stop #{job.pk}" in state.detail, state
    assert environment.lifecycle == Lifecycle.RUNNING, "nothing was recorded as stopped"

    jobs_worker.start()
    run(environment, users["alice"], "start", timeout=180)
    assert {c["state"] for c in containers(lab1).values()} == {"running"}
    assert environment_state(environment).code == EnvironmentState.RUNNING


@pytest.fixture
def local_root() -> Iterator[Path]:
    """A directory under the worker's BACKUP_LOCAL_ROOTS (the worker is another process: its settings apply)."""
    root = Path(settings.BACKUP_LOCAL_ROOTS[0]) / f"test-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_destroy_takes_a_final_backup_first(
    lifecycle_env: Environment, lab1: LabHost, users: dict[str, Any], local_root: Path
) -> None:
    from backups.models import Backup, BackupSettings
    from tests.backup_fixtures import make_local_storage

    environment = lifecycle_env
    storage = make_local_storage(environment.project.organization, local_root)
    BackupSettings.objects.create(environment=environment, storage=storage)
    job = run(environment, users["alice"], "destroy", confirm="prod", backup=True, volumes=True, timeout=180)
    backup = Backup.objects.get(job=job)
    assert backup.status == "good", backup.reason
    assert (local_root / backup.key_prefix / "manifest.json").exists() or any(local_root.rglob("manifest.json"))
    steps = [step["name"] for step in job.result["steps"]]
    assert steps.index("Write the manifest") < steps.index("Take down the containers"), steps
    assert containers(lab1) == {} and volumes(lab1) == []
    event = AuditEvent.objects.get(action="environment.destroy", object_id=str(environment.pk))
    assert event.detail["backup"] is True and event.detail["volumes"] is True


def test_a_server_that_stops_answering_fails_a_stop_in_bounded_time(
    lifecycle_env: Environment, lab1: LabHost, users: dict[str, Any], jobs_worker: Any
) -> None:
    """sshd paused while ``compose stop`` waits (silently) for a container that ignores SIGTERM: the unanswered
    keepalive fails the job within its bound with a reason that says so, nothing is recorded as stopped (the
    environment needs attention), and once the host answers again nothing of the job is left there and a Start
    proves the environment runs."""
    environment = lifecycle_env
    lab1.ssh("sh", "-c", 'printf %s "$2" >"$1/src/slow.yaml"', "sh", DIRECTORY, SLOW_YAML, check=True)
    Environment.objects.filter(pk=environment.pk).update(compose_files=["prod.yaml", "slow.yaml"])
    environment.refresh_from_db()
    up = lab1.ssh(*COMPOSE[:-2], "-f", f"{DIRECTORY}/src/slow.yaml", *COMPOSE[-2:], "up", "-d", timeout=300)
    assert up.returncode == 0, up.stderr

    job = start_lifecycle(environment=environment, actor=users["alice"], action="stop", confirm="prod")
    deadline = time.monotonic() + 60
    while not JobLogLine.objects.filter(job=job, text__startswith="▶ Stop every service").exists():
        assert time.monotonic() < deadline, "the stop never started"
        time.sleep(0.1)
    time.sleep(1)
    lab1.pause_sshd()
    paused_at = time.monotonic()
    bound = settings.SSH_KEEPALIVE_INTERVAL * 2 + settings.SSH_BANNER_TIMEOUT + 10
    try:
        job = wait_job(job, timeout=bound + 30)
        took = time.monotonic() - paused_at
    finally:
        lab1.resume_sshd()
    assert took <= bound, took
    assert job.status == "failed", (job.status, job.reason)
    assert "stopped answering over SSH" in job.reason, job.reason
    environment.refresh_from_db()
    assert environment.lifecycle == Lifecycle.RUNNING, "nothing was recorded as stopped"
    assert environment_state(environment).code == EnvironmentState.NEEDS_ATTENTION
    deadline = time.monotonic() + 60
    while tagged_processes(lab1, job):
        assert time.monotonic() < deadline, "the stop's commands still ran on the server after it answered again"
        time.sleep(0.5)

    run(environment, users["alice"], "start", timeout=180)
    assert {c["state"] for c in containers(lab1).values()} == {"running"}
    assert environment_state(environment).code == EnvironmentState.RUNNING
