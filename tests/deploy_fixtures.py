"""Fixtures and helpers for tests that deploy the lab's sample Doodba project (a pytest plugin)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from deployments.models import Deployment
from deployments.services import start_deploy
from panel.inventory.models import Environment
from panel.inventory.services import create_environment, create_project
from panel.jobs.models import JobLogLine
from tests.lab_helpers import add_lab_server, wait_job

KEY = "panel-demo-16-0-prod"
COMPOSE = ["docker", "compose", "-p", KEY, "-f", f"doodba-panel/{KEY}/src/prod.yaml",
           "-f", f"doodba-panel/{KEY}/src/docker-compose.panel.yaml"]  # fmt: skip
MANIFEST = "odoo/custom/src/private/panel_demo/__manifest__.py"


def clean_host(host: Any) -> None:
    host.docker("compose", "-p", KEY, "down", "-v", "--remove-orphans", timeout=300)
    shutil.rmtree(host.home / "doodba-panel", ignore_errors=True)


@pytest.fixture
def deploy_env(jobs_worker: Any, lab1: Any, lab_sample: Any, users: dict[str, Any], orgs: dict[str, Any]):
    """An environment of the sample project on lab1, cleaned from the host afterwards."""
    clean_host(lab1)
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    project = create_project(
        organization=orgs["a1"], actor=users["alice"], name="Panel demo", slug="panel-demo",
        git_url=str(lab_sample.sample_repo_path), odoo_version="16.0",
    )  # fmt: skip
    environment = create_environment(
        project=project, server=server, actor=users["alice"], name="prod", kind="production",
        compose_files=["prod.yaml"], git_ref="main",
    )  # fmt: skip
    assert environment.compose_project == KEY
    yield environment
    clean_host(lab1)


def deploy(environment: Environment, actor: Any, ref: str = "", timeout: float = 300) -> Deployment:
    deployment = start_deploy(environment=environment, actor=actor, ref=ref)
    wait_job(deployment.job, timeout=timeout)
    deployment.refresh_from_db()
    deployment.job.refresh_from_db()
    return deployment


def wait_for_step(deployment: Deployment, name: str, timeout: float = 120) -> None:
    """Wait until the deployment's job has started the step ``name``."""
    deadline = time.monotonic() + timeout
    while not any(step["name"] == name for step in deployment.job.result.get("steps", [])):
        assert time.monotonic() < deadline, f"the deploy never reached its step {name!r}"
        time.sleep(0.1)
        deployment.job.refresh_from_db()


def health(host: Any) -> dict[str, Any]:
    result = host.ssh(*COMPOSE, "exec", "-T", "odoo", "curl", "-fsS", "http://localhost:8069/web/health")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def log_text(deployment: Deployment) -> str:
    return "\n".join(JobLogLine.objects.filter(job=deployment.job).values_list("text", flat=True))


def installed_version(host: Any, addon: str) -> str:
    sql = f"SELECT latest_version FROM ir_module_module WHERE name = '{addon}'"
    result = host.ssh(*COMPOSE, "exec", "-T", "odoo", "psql", "-tAc", sql)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def api_call(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API request with a token, as an integration sends it: (status, decoded JSON body)."""
    data = json.dumps(body if body is not None else {}).encode() if method != "GET" else None
    request = urllib.request.Request(
        f"{base}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def api_deploy(base: str, token: str, environment: Environment, ref: str = "") -> Deployment:
    """Start a deploy through the API (202) and return its deployment."""
    status, body = api_call(base, token, "POST", f"/api/v1/environments/{environment.pk}/deploy/",
                            {"ref": ref} if ref else {})  # fmt: skip
    assert status == 202, body
    return Deployment.objects.select_related("job").get(pk=body["deployment"]["id"])
