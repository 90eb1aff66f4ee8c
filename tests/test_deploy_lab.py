"""Deploying the sample Doodba project to a lab host through a real worker: pipeline, updates, failures, rollback."""

from __future__ import annotations

import pytest

from monitoring.models import Event
from tests.deploy_fixtures import KEY, deploy, health, log_text

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def test_it_deploys_the_sample_project_and_it_answers_health(deploy_env, lab1, lab_sample, users) -> None:
    deployment = deploy(deploy_env, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason + log_text(deployment)[-3000:]
    assert deployment.status == "succeeded"
    assert deployment.commit == lab_sample.sample_initial_sha
    assert health(lab1) == {"status": "pass"}
    steps = [step["name"] for step in deployment.job.result["steps"]]
    assert steps == ["Fetch code", "Write configuration", "Build images", "Update database", "Start",
                     "Wait until healthy"]  # fmt: skip
    assert all(step["status"] == "succeeded" and step["seconds"] >= 0 for step in deployment.job.result["steps"])
    deploy_env.refresh_from_db()
    assert deploy_env.current_deployment_id == deployment.pk
    assert deployment.images["odoo"]["ref"] == f"{KEY}-odoo:panel-{deployment.pk}"
    assert deployment.images["odoo"]["id"].startswith("sha256:")
    assert deployment.config["secret_names"] == ["ADMIN_PASSWORD", "PGPASSWORD", "POSTGRES_PASSWORD"]
    assert "initialising it" in log_text(deployment)
    # The secret files exist with mode 0600 and hold the generated values.
    mode = lab1.ssh("stat", "-c", "%a", f"doodba-panel/{KEY}/src/.docker/db-access.env", check=True).stdout.strip()
    assert mode == "600"
    assert Event.objects.filter(deployment=deployment, kind="deploy.succeeded").exists()
