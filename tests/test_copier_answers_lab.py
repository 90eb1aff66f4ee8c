"""A first deploy reads the sample project's ``.copier-answers.yml`` (as doodba-copier-template writes it) on the
lab host and fills what the panel was not told: the environment's domain and aliases, the project's Odoo version.
The new environment follows the project's default branch (a branch other than ``main`` here)."""

from __future__ import annotations

from typing import Any

import pytest

from panel.inventory.models import Environment
from panel.inventory.services import create_environment, create_project
from tests.deploy_fixtures import KEY, clean_host, deploy, log_text
from tests.lab.lab import run, sample_repo_path
from tests.lab_helpers import add_lab_server

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

BRANCH = "release-16"


@pytest.fixture
def release_branch(lab_sample: Any) -> Any:
    """A second branch of the sample repository, at the pristine commit."""
    repo = sample_repo_path()
    run(["git", "--git-dir", repo, "branch", "--force", BRANCH, "main"])
    yield BRANCH
    run(["git", "--git-dir", repo, "branch", "-D", BRANCH])


def test_it_fills_domains_and_odoo_version_from_the_answers_on_the_first_deploy(
    jobs_worker: Any, lab1: Any, lab_sample: Any, release_branch: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    clean_host(lab1)
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    # Created with the form's default Odoo version, not the project's (the answers say 16.0): the first deploy fixes it.
    project = create_project(
        organization=orgs["a1"], actor=users["alice"], name="Panel demo", slug="panel-demo",
        git_url=str(lab_sample.sample_repo_path), odoo_version="15.0", default_branch=release_branch,
    )  # fmt: skip
    environment = create_environment(
        project=project, server=server, actor=users["alice"], name="prod", kind="production",
        compose_files=["prod.yaml"], compose_project=KEY,
    )  # fmt: skip
    assert environment.git_ref == release_branch and environment.domain == ""
    try:
        deployment = deploy(environment, users["alice"], timeout=600)
        assert deployment.status == "succeeded", (deployment.job.reason, log_text(deployment)[-3000:])
        text = log_text(deployment)
        assert f"Checked out {lab_sample.sample_initial_sha[:12]} ({release_branch})." in text
        assert "Domain panel-demo.example.com, aliases www.panel-demo.example.com: from domains_prod" in text
        assert "Odoo version 16.0: from .copier-answers.yml (was 15.0)." in text
        assert "PostgreSQL 15: from postgres_version in .copier-answers.yml." in text
        environment = Environment.objects.select_related("project").get(pk=environment.pk)
        assert environment.domain == "panel-demo.example.com"
        assert environment.aliases == ["www.panel-demo.example.com"]
        assert environment.project.odoo_version == "16.0" and environment.project.postgres_version == "15"
        assert environment.project.copier_answers["commit"] == lab_sample.sample_initial_sha
        # The environment's own choices win from then on: a second deploy reads nothing over them.
        Environment.objects.filter(pk=environment.pk).update(domain="erp.example.org", aliases=[])
        again = deploy(environment, users["alice"], timeout=600)
        assert again.status == "succeeded", again.job.reason
        assert ".copier-answers.yml" not in log_text(again)
        assert Environment.objects.get(pk=environment.pk).domain == "erp.example.org"
    finally:
        clean_host(lab1)
