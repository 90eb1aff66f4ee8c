"""Preparing bare lab hosts for Doodba: the Prepare server job through the API, and deploys that create the
external networks their compose files declare (real sshd + dockerd, a real Celery worker, uvicorn).

The lab hosts start bare (``tests/lab/lab.py`` makes no network); ``make_bare`` also removes what earlier tests on
this machine left, so every test here starts from a host that never ran Doodba.
"""

from __future__ import annotations

from typing import Any

import pytest

from panel.accounts.services import create_token
from panel.inventory.services import create_environment, create_project
from panel.jobs.models import Job, JobLogLine
from tests.deploy_fixtures import KEY, api_call, clean_host, deploy, log_text
from tests.lab.lab import SAMPLE_BRANCH
from tests.lab_helpers import add_lab_server, wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

TEST_KEY = "panel-demo-16-0-test"
# The external networks the sample project declares (prod.yaml and test.yaml, as doodba-copier-template's).
SHARED = ("inverseproxy_shared", "globalwhitelist_shared")


def make_bare(host: Any) -> None:
    """Remove the sample environments and the shared networks from the host (and detach any leftover from them)."""
    clean_host(host)
    host.docker("compose", "-p", TEST_KEY, "down", "-v", "--remove-orphans", timeout=300)
    for network in SHARED:
        attached = host.docker("network", "inspect", "--format", "{{range $id, $c := .Containers}}{{$id}} {{end}}",
                               network)  # fmt: skip
        for container in attached.stdout.split():
            host.docker("network", "disconnect", "--force", network, container, check=True)
        host.docker("network", "rm", network)
        assert host.docker("network", "inspect", network).returncode != 0, f"{network} is still on {host.name}"


def networks_on(host: Any) -> set[str]:
    return set(host.docker("network", "ls", "--format", "{{.Name}}", check=True).stdout.split())


def job_log(job: Job) -> str:
    return "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))


@pytest.fixture
def bare_lab1(lab1: Any) -> Any:
    make_bare(lab1)
    yield lab1
    make_bare(lab1)


@pytest.fixture
def demo_project(lab_sample: Any, users: dict[str, Any], orgs: dict[str, Any]) -> Any:
    return create_project(
        organization=orgs["a1"], actor=users["alice"], name="Panel demo", slug="panel-demo",
        git_url=str(lab_sample.sample_repo_path), odoo_version="16.0",
    )  # fmt: skip


def test_it_deploys_a_test_environment_on_a_bare_host_creating_its_external_network(
    jobs_worker: Any, bare_lab1: Any, demo_project: Any, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    assert not networks_on(bare_lab1) & set(SHARED)
    server = add_lab_server(orgs["a"], users["alice"], bare_lab1)
    environment = create_environment(
        project=demo_project, server=server, actor=users["alice"], name="test", kind="test",
        compose_files=["test.yaml"], git_ref=SAMPLE_BRANCH,
    )  # fmt: skip
    assert environment.compose_project == TEST_KEY
    deployment = deploy(environment, users["alice"], timeout=600)
    assert deployment.status == "succeeded", (deployment.job.reason, log_text(deployment)[-3000:])
    text = log_text(deployment)
    # test.yaml declares globalwhitelist_shared; the panel's override adds inverseproxy_shared, because the domain
    # came from .copier-answers.yml (domains_test) and a domain is routed through the proxy's network.
    assert "Domain test.panel-demo.example.com: from domains_test in .copier-answers.yml." in text
    assert "Created the external networks globalwhitelist_shared, inverseproxy_shared." in text, text[-3000:]
    # Before anything needed them: the database steps (compose run) and up come after "Write configuration".
    steps = [step["name"] for step in deployment.job.result["steps"]]
    assert steps.index("Write configuration") < steps.index("Update database") < steps.index("Start")
    assert set(SHARED) <= networks_on(bare_lab1)
    odoo = bare_lab1.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={TEST_KEY}",
                            "--filter", "label=com.docker.compose.service=odoo", check=True).stdout.split()  # fmt: skip
    assert len(odoo) == 1
    joined = bare_lab1.docker("inspect", "--format", "{{range $name, $n := .NetworkSettings.Networks}}{{$name}} {{end}}",
                              odoo[0], check=True).stdout.split()  # fmt: skip
    assert {"globalwhitelist_shared", "inverseproxy_shared"} <= set(joined), joined


def check_out(host: Any, lab_sample: Any, key: str) -> None:
    """Leave a checkout of the sample project on the host as a deploy's fetch and secret step would."""
    src = f"doodba-panel/{key}/src"
    script = (
        'mkdir -p "$(dirname "$1")" && git clone -q "$2" "$1" && mkdir -p "$1/.docker" && '
        'for f in odoo db-access db-creation smtp backup; do : >"$1/.docker/$f.env"; done'
    )
    result = host.ssh("sh", "-c", script, "sh", src, str(lab_sample.sample_repo_path))
    assert result.returncode == 0, result.stderr


def test_it_prepares_a_bare_host_through_the_api(
    jobs_worker: Any, live_server_url: str, bare_lab1: Any, lab_sample: Any, demo_project: Any,
    users: dict[str, Any], orgs: dict[str, Any],
) -> None:  # fmt: skip
    server = add_lab_server(orgs["a"], users["alice"], bare_lab1)
    prod = create_environment(project=demo_project, server=server, actor=users["alice"], name="prod",
                              kind="production", compose_files=["prod.yaml"])  # fmt: skip
    create_environment(project=demo_project, server=server, actor=users["alice"], name="test", kind="test",
                       compose_files=["test.yaml"])  # fmt: skip
    assert prod.compose_project == KEY
    check_out(bare_lab1, lab_sample, KEY)  # prod is checked out, test never was
    _, token = create_token(user=users["olga"], name="prepare", scope="write")  # an operator
    path = f"/api/v1/servers/{server.pk}/prepare/"

    status, body = api_call(live_server_url, token, "POST", path)
    assert status == 202, body
    busy, refused = api_call(live_server_url, token, "POST", path)
    assert busy == 409 and refused["job"] == body["job"]["id"], refused
    job = wait_job(Job.objects.get(pk=body["job"]["id"]), timeout=120)
    assert job.status == "succeeded", (job.reason, job_log(job))
    text = job_log(job)
    docker_version = bare_lab1.docker("version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
    compose_version = bare_lab1.ssh("docker", "compose", "version", "--short", check=True).stdout.strip()
    assert f"Docker engine {docker_version}." in text
    assert f"Docker Compose {compose_version}." in text
    assert "git 2." in text
    # The lab's deploy user is not root, and this machine has no sudo for it: the panel may not install.
    assert f"{bare_lab1.username} is not root and has no passwordless sudo" in text
    assert "not checked out on this server yet" in text
    assert "Created the external network inverseproxy_shared." in text
    assert job.result["created"] == ["inverseproxy_shared"]
    assert "inverseproxy_shared" in networks_on(bare_lab1)
    assert "globalwhitelist_shared" not in networks_on(bare_lab1)  # the test environment has no checkout

    status, body = api_call(live_server_url, token, "POST", path)
    assert status == 202, body
    again = wait_job(Job.objects.get(pk=body["job"]["id"]), timeout=120)
    assert again.status == "succeeded", again.reason
    assert again.result["created"] == [] and again.result["present"] == ["inverseproxy_shared"]
    assert "Created no network: inverseproxy_shared already exists." in job_log(again)


def test_it_explains_what_to_run_when_the_ssh_user_may_not_use_docker(
    jobs_worker: Any, live_server_url: str, lab1: Any, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1, user=lab1.nodocker_username)
    _, token = create_token(user=users["alice"], name="prepare", scope="write")
    status, body = api_call(live_server_url, token, "POST", f"/api/v1/servers/{server.pk}/prepare/", {"install": True})
    assert status == 202, body
    job = wait_job(Job.objects.get(pk=body["job"]["id"]), timeout=120)
    assert job.status == "failed"
    assert job.reason.startswith("Missing on the server: access to Docker."), job.reason
    assert f"sudo usermod -aG docker {lab1.nodocker_username}" in job.reason
    # Nothing installable is missing, so even with install=true no apt-get ran.
    assert "Install packages" not in [step["name"] for step in job.result.get("steps", [])]
    assert f"{lab1.nodocker_username} is not root and has no passwordless sudo" in job_log(job)


def test_a_deploy_checks_the_tools_first_and_changes_nothing_when_one_is_missing(
    jobs_worker: Any, lab1: Any, demo_project: Any, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1, user=lab1.nodocker_username)
    environment = create_environment(
        project=demo_project, server=server, actor=users["alice"], name="test", kind="test",
        compose_files=["test.yaml"], git_ref=SAMPLE_BRANCH,
    )  # fmt: skip
    deployment = deploy(environment, users["alice"], timeout=120)
    assert deployment.status == "failed_no_rollback", deployment.status
    reason = deployment.job.reason
    assert reason.startswith("Step “Check the server” failed: Missing on the server: access to Docker."), reason
    assert f"sudo usermod -aG docker {lab1.nodocker_username}" in reason
    assert reason.endswith("Nothing was changed on the server; the running version is untouched."), reason
    assert [(s["name"], s["status"]) for s in deployment.job.result["steps"]] == [("Check the server", "failed")]
    # Nothing was fetched: the environment's directory holds only the job lock's files.
    script = f"ls -A ~/doodba-panel/{TEST_KEY} 2>/dev/null || true"
    listing = lab1.ssh("sh", "-c", script, user=lab1.nodocker_username, check=True).stdout.split()
    assert "src" not in listing and set(listing) <= {".panel-lock", ".panel-lock-holder"}, listing
