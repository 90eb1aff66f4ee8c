"""*Read from the repository*: a project's ``.copier-answers.yml`` read on a lab host before any environment exists,
through the API and the project page (real sshd + git on the lab host, a real Celery worker, uvicorn)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from panel.accounts.services import create_token
from panel.inventory.models import Project
from panel.inventory.services import create_environment
from panel.jobs.models import Job, JobLogLine
from tests.deploy_fixtures import api_call
from tests.lab_helpers import add_lab_server, wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def test_it_fills_a_new_project_from_its_answers_and_new_environments_start_from_its_domains(
    jobs_worker: Any, live_server_url: str, lab1: Any, lab_sample: Any, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    client = Client()
    client.force_login(users["alice"])
    # Created on the form with a blank name and the form's Odoo version: the answers say panel-demo, 16.0 and 15.
    response = client.post("/projects/new/", {
        "organization": orgs["a"].pk, "name": "", "slug": "answers-demo", "git_url": str(lab_sample.sample_repo_path),
        "default_branch": "main", "odoo_version": "15.0", "git_known_hosts": "",
    })  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    project = Project.objects.get(slug="answers-demo")
    assert project.name == "answers-demo" and project.postgres_version == "" and project.copier_answers == {}
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert "Not read yet." in page and "Read from the repository" in page

    _, token = create_token(user=users["alice"], name="answers", scope="write")
    path = f"/api/v1/projects/{project.pk}/read-answers/"
    status, body = api_call(live_server_url, token, "POST", path, {"server": server.pk})
    assert status == 202, body
    job = wait_job(Job.objects.get(pk=body["job"]["id"]), timeout=180)
    log = "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
    assert job.status == "succeeded", f"{job.reason}\n{log}"
    assert [step["name"] for step in job.result["steps"]] == ["Fetch code", "Read .copier-answers.yml"]
    project.refresh_from_db()
    assert (project.name, project.odoo_version, project.postgres_version) == ("panel-demo", "16.0", "15")
    assert "Name 'panel-demo': from project_name in .copier-answers.yml." in log
    assert "Odoo version 16.0: from .copier-answers.yml (was 15.0)." in log
    assert "PostgreSQL 15: from postgres_version in .copier-answers.yml." in log
    assert project.copier_answers["domains"] == {
        "prod": {"main": "panel-demo.example.com", "aliases": ["www.panel-demo.example.com"]},
        "test": {"main": "test.panel-demo.example.com", "aliases": []},
    }
    assert len(project.copier_answers["commit"]) == 40
    # The project page shows what was read; the API too.
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert "panel-demo.example.com (aliases www.panel-demo.example.com)" in page
    assert "test.panel-demo.example.com" in page
    status, body = api_call(live_server_url, token, "GET", f"/api/v1/projects/{project.pk}/")
    assert status == 200 and body["postgres_version"] == "15", body
    assert body["copier_answers"]["domains"]["test"]["main"] == "test.panel-demo.example.com"

    # New environments without a domain start from the answers, by kind; a given domain wins.
    prod = create_environment(project=project, server=server, actor=users["alice"], name="prod", kind="production")
    assert (prod.domain, prod.aliases) == ("panel-demo.example.com", ["www.panel-demo.example.com"])
    test = create_environment(project=project, server=server, actor=users["alice"], name="test", kind="test",
                              compose_files=["test.yaml"])  # fmt: skip
    assert (test.domain, test.aliases) == ("test.panel-demo.example.com", [])
    # A second staging environment on the same server cannot route the same domain: it is left blank.
    staging = create_environment(project=project, server=server, actor=users["alice"], name="staging",
                                 kind="staging", compose_files=["test.yaml"])  # fmt: skip
    assert (staging.domain, staging.aliases) == ("", [])
    own = create_environment(project=project, server=server, actor=users["alice"], name="dev", kind="development",
                             compose_files=["test.yaml"], domain="dev.panel-demo.example.com")  # fmt: skip
    assert own.domain == "dev.panel-demo.example.com"

    # Reading again changes nothing the answers already set, and says so.
    status, body = api_call(live_server_url, token, "POST", path, {"server": server.pk})
    assert status == 202, body
    again = wait_job(Job.objects.get(pk=body["job"]["id"]), timeout=180)
    assert again.status == "succeeded", again.reason
    assert again.result["changed"] == []


def test_it_refuses_a_server_the_project_may_not_use(
    live_server_url: str, lab1: Any, lab_sample: Any, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    from panel.inventory.services import create_project, create_server

    other = add_lab_server(orgs["b"], users["bob"], lab1)
    mine = create_server(organization=orgs["a"], actor=users["alice"], name="unconfirmed", host=lab1.address,
                         port=lab1.port, username=lab1.username, private_key=lab1.private_key_pem)  # fmt: skip
    project = create_project(organization=orgs["a"], actor=users["alice"], name="Demo", slug="demo",
                             git_url=str(lab_sample.sample_repo_path))  # fmt: skip
    _, token = create_token(user=users["alice"], name="answers", scope="write")
    path = f"/api/v1/projects/{project.pk}/read-answers/"
    status, body = api_call(live_server_url, token, "POST", path, {"server": other.pk})
    assert status == 400 and body == {"server": ["No such server."]}, body
    status, body = api_call(live_server_url, token, "POST", path, {"server": mine.pk})
    assert status == 400 and "Confirm the host key" in body["detail"], body
    status, body = api_call(live_server_url, token, "POST", path, {"server": "x"})
    assert status == 400 and "server" in body, body
    assert not Job.objects.filter(kind="read_answers").exists()
