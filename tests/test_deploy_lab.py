"""Deploying the sample Doodba project to a lab host through a real worker: pipeline, updates, failures, rollback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from deployments.models import Deployment
from deployments.services import start_deploy, start_rollback
from monitoring.models import Event
from panel.jobs.services import request_cancel
from tests.deploy_fixtures import (
    COMPOSE,
    KEY,
    MANIFEST,
    deploy,
    health,
    installed_version,
    log_text,
    wait_for_step,
)
from tests.lab_helpers import wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def test_it_deploys_the_sample_project_and_it_answers_health(deploy_env, lab1, lab_sample, users) -> None:
    deployment = deploy(deploy_env, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason + log_text(deployment)[-3000:]
    assert deployment.status == "succeeded"
    assert deployment.commit == lab_sample.sample_initial_sha
    assert health(lab1) == {"status": "pass"}
    steps = [step["name"] for step in deployment.job.result["steps"]]
    assert steps == ["Check the server", "Fetch code", "Write configuration", "Build images", "Update database",
                     "Start", "Wait until healthy", "Clean up images"]  # fmt: skip
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


def bump_manifest(lab_sample: Any, version: str) -> str:
    manifest = lab_sample.sample_file(MANIFEST).replace('"16.0.1.0.0"', f'"{version}"')
    assert version in manifest
    return lab_sample.commit_to_sample({MANIFEST: manifest}, f"panel_demo {version}")


def test_it_updates_only_the_addon_whose_code_changed(deploy_env, lab1, lab_sample, users) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    assert installed_version(lab1, "panel_demo") == "16.0.1.0.0"
    sha = bump_manifest(lab_sample, "16.0.1.1.0")
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "succeeded", second.job.reason
    assert second.commit == sha
    assert second.changes["commits"][0].startswith(sha)
    text = log_text(second)
    assert "Updating addons for their hash changed: panel_demo." in text
    assert "initialising" not in text
    assert installed_version(lab1, "panel_demo") == "16.0.1.1.0"
    assert installed_version(lab1, "base") == "16.0.1.3"
    assert health(lab1) == {"status": "pass"}


def test_it_rolls_back_when_the_image_build_fails(deploy_env, lab1, lab_sample, users) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    dockerfile = lab_sample.sample_file("odoo/Dockerfile") + "RUN echo 'broken build' && exit 3\n"
    lab_sample.commit_to_sample({"odoo/Dockerfile": dockerfile}, "break the build")
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "failed"
    assert "Step “Build images” failed" in second.job.reason
    assert f"Rolled back to deployment #{first.pk}" in second.job.reason
    assert "serving again" in second.job.reason
    assert second.status == "failed"
    assert second.rollback == {"to": first.pk, "outcome": "succeeded"}
    assert "broken build" in log_text(second)
    assert health(lab1) == {"status": "pass"}
    running = lab1.docker("inspect", "--format", "{{.Config.Image}}", f"{KEY}-odoo-1", check=True).stdout.strip()
    assert running == first.images["odoo"]["ref"]
    deploy_env.refresh_from_db()
    assert deploy_env.current_deployment_id == first.pk and not deploy_env.degraded
    assert Event.objects.filter(deployment=second, kind="deploy.rolled_back").exists()


def test_it_rolls_back_when_odoo_never_becomes_healthy(deploy_env, lab1, lab_sample, users) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    prod = lab_sample.sample_file("prod.yaml").replace(
        "    restart: unless-stopped\n    hostname:",
        '    restart: unless-stopped\n    command: ["sleep", "infinity"]\n    hostname:',
        1,
    )
    assert "sleep" in prod
    lab_sample.commit_to_sample({"prod.yaml": prod}, "odoo never answers")
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "failed"
    assert "Step “Wait until healthy” failed: Odoo did not become healthy within 30 s" in second.job.reason
    assert f"Rolled back to deployment #{first.pk}" in second.job.reason
    steps = [(s["name"], s["status"]) for s in second.job.result["steps"]]
    assert ("Wait until healthy", "failed") in steps and ("Rollback: Wait until healthy", "succeeded") in steps
    assert health(lab1) == {"status": "pass"}
    command = lab1.docker("inspect", "--format", "{{json .Config.Cmd}}", f"{KEY}-odoo-1", check=True).stdout
    assert "sleep" not in command


def commit_update_that_never_gets_healthy(lab_sample: Any, version: str) -> str:
    """One commit that updates an addon (the update step changes the database) and leaves Odoo unhealthy."""
    manifest = lab_sample.sample_file(MANIFEST).replace('"16.0.1.0.0"', f'"{version}"')
    prod = lab_sample.sample_file("prod.yaml").replace(
        "    restart: unless-stopped\n    hostname:",
        '    restart: unless-stopped\n    command: ["sleep", "infinity"]\n    hostname:',
        1,
    )
    return lab_sample.commit_to_sample({MANIFEST: manifest, "prod.yaml": prod}, f"panel_demo {version}, no health")


def panel_databases(host: Any) -> list[str]:
    sql = "SELECT datname FROM pg_database WHERE datname LIKE 'panel_%' ORDER BY 1"
    result = host.ssh(*COMPOSE, "exec", "-T", "db", "psql", "-U", "odoo", "-d", "postgres", "-tAc", sql)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_it_restores_the_database_when_a_production_update_is_rolled_back(
    deploy_env, lab1, lab_sample, users, client
) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    assert not first.db_snapshot, "a first deploy initialises the database: nothing to dump"
    commit_update_that_never_gets_healthy(lab_sample, "16.0.1.5.0")
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "failed"
    steps = [s["name"] for s in second.job.result["steps"]]
    assert steps.index("Snapshot database") < steps.index("Update database")
    assert "Rollback: Restore database" in steps
    assert "Updating addons for their hash changed: panel_demo." in log_text(second)
    assert "The database was restored from the dump taken before the update." in second.job.reason, log_text(second)[
        -3000:
    ]
    assert second.rollback == {"to": first.pk, "outcome": "succeeded", "database": "restored"}
    # The dump is on the server, readable by its owner only; the database is the one from before the update.
    path = second.db_snapshot["path"]
    assert path == f"doodba-panel/{KEY}/snapshots/deployment-{second.pk}.dump" and second.db_snapshot["bytes"] > 0
    assert oct((lab1.home / path).stat().st_mode & 0o777) == "0o600"
    assert installed_version(lab1, "panel_demo") == "16.0.1.0.0"
    assert health(lab1) == {"status": "pass"}
    # The database the failed update left is kept aside, under a name Odoo's db filter does not match.
    assert panel_databases(lab1) == ["panel_failed_prod"]
    assert "Swapped the databases: prod is the restored one, panel_failed_prod the one the failed deploy left." in (
        log_text(second)
    )
    client.force_login(users["alice"])
    page = client.get(f"/deployments/{second.pk}/").content.decode()
    assert f"deployment-{second.pk}.dump" in page and "restored" in page
    body = client.get(f"/api/v1/deployments/{second.pk}/").json()
    assert body["db_snapshot"] == second.db_snapshot and body["rollback"]["database"] == "restored"
    client.force_login(users["carol"])  # a customer: neither the dump nor the rollback details
    body = client.get(f"/api/v1/deployments/{second.pk}/").json()
    assert body["status"] == "failed" and not {"db_snapshot", "rollback"} & set(body)


def test_a_restore_that_fails_leaves_the_database_as_it_was(deploy_env, lab1, lab_sample, users) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    commit_update_that_never_gets_healthy(lab_sample, "16.0.1.6.0")
    second = start_deploy(environment=deploy_env, actor=users["alice"])
    wait_for_step(second, "Update database")
    # The dump on the server is damaged while the deploy waits for Odoo.
    second.refresh_from_db()
    (lab1.home / second.db_snapshot["path"]).write_bytes(b"PGDMP but not a dump")
    job = wait_job(second.job, timeout=300)
    second.refresh_from_db()
    assert job.status == "failed" and second.status == "degraded"
    assert "Restoring the dump failed" in job.reason and "degraded" in job.reason, job.reason
    # The database was never stopped, renamed or closed: it is the one the update left, and it takes connections.
    assert installed_version(lab1, "panel_demo") == "16.0.1.6.0"
    assert "panel_failed_prod" not in panel_databases(lab1)


def test_it_keeps_stored_values_inert_on_the_host(deploy_env, lab1, users) -> None:
    marker = "/tmp/panel-deploy-injection-marker"
    lab1.ssh("rm", "-f", marker)
    payloads = {
        "PANEL_A": f"$(touch {marker})",
        "PANEL_B": f"`touch {marker}`; touch {marker} && echo ${{HOME}}",
        "PANEL_C": 'it\'s "quoted" \\ $PGPASSWORD',
    }
    deploy_env.env_vars = payloads
    deploy_env.set_secrets({"ADMIN_PASSWORD": f"pw'$(touch {marker})\"`x`$$"})
    deploy_env.full_clean()
    deploy_env.save()
    deployment = deploy(deploy_env, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason
    for name, value in payloads.items():
        seen = lab1.ssh(*COMPOSE, "exec", "-T", "odoo", "printenv", name, check=True).stdout.rstrip("\n")
        assert seen == value
    seen = lab1.ssh(*COMPOSE, "exec", "-T", "odoo", "printenv", "ADMIN_PASSWORD", check=True).stdout.rstrip("\n")
    assert seen == f"pw'$(touch {marker})\"`x`$$"
    assert lab1.ssh("test", "-e", marker).returncode == 1, "nothing ran"
    # Secret values never reach the job log or the deployment record.
    assert "pw'" not in log_text(deployment)
    assert "pw'" not in json.dumps(deployment.config)


def test_it_refuses_refs_that_could_reach_a_shell(deploy_env, users) -> None:
    for ref in ["; touch /tmp/x", "$(id)", "-oProxyCommand=x", "--upload-pack=touch", "main\nx", "a..b"]:
        with pytest.raises(ValidationError):
            start_deploy(environment=deploy_env, actor=users["alice"], ref=ref)
    assert not Deployment.objects.exists()


def test_it_interrupts_a_deploy_whose_worker_died_and_the_next_one_succeeds(
    deploy_env, jobs_worker, monitoring_worker, lab1, users
) -> None:
    first = start_deploy(environment=deploy_env, actor=users["alice"])
    wait_for_step(first, "Build images")
    jobs_worker.kill()
    job = wait_job(first.job, timeout=60, statuses=("interrupted",))
    assert "stopped responding" in job.reason
    first.refresh_from_db()
    assert first.effective_status == "interrupted"
    jobs_worker.start()
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "succeeded", second.job.reason
    assert health(lab1) == {"status": "pass"}
    job.refresh_from_db()
    assert job.status == "interrupted", "the interrupted deploy is never resumed"


def test_it_cancels_a_running_deploy_at_a_step_boundary(deploy_env, lab1, lab_sample, users) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    bump_manifest(lab_sample, "16.0.2.0.0")
    second = start_deploy(environment=deploy_env, actor=users["alice"])
    wait_for_step(second, "Build images")
    request_cancel(second.job)
    job = wait_job(second.job, timeout=120)
    assert job.status == "canceled"
    assert f"Rolled back to deployment #{first.pk}" in job.reason
    assert installed_version(lab1, "panel_demo") == "16.0.1.0.0"
    assert health(lab1) == {"status": "pass"}


def test_it_rolls_back_to_an_earlier_deployment_on_request(deploy_env, lab1, lab_sample, users) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    bump_manifest(lab_sample, "16.0.1.1.0")
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "succeeded", second.job.reason
    rollback = start_rollback(deployment=first, actor=users["alice"])
    wait_job(rollback.job, timeout=300)
    rollback.refresh_from_db()
    rollback.job.refresh_from_db()
    assert rollback.job.status == "succeeded", rollback.job.reason
    assert rollback.kind == "rollback" and rollback.commit == first.commit and rollback.source_id == first.pk
    assert rollback.job.result["steps"][0]["name"] == f"Check out {first.short_commit}"
    running = lab1.docker("inspect", "--format", "{{.Config.Image}}", f"{KEY}-odoo-1", check=True).stdout.strip()
    assert running == first.images["odoo"]["ref"]
    deploy_env.refresh_from_db()
    assert deploy_env.current_deployment_id == first.pk
    assert health(lab1) == {"status": "pass"}


def test_it_marks_the_environment_degraded_when_the_rollback_fails_too(deploy_env, lab1, lab_sample, users) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    # The first deployment's pinned image disappears (pruned), so it cannot be put back.
    lab1.docker("rmi", first.images["odoo"]["ref"], check=True)
    dockerfile = lab_sample.sample_file("odoo/Dockerfile") + "RUN exit 4\n"
    lab_sample.commit_to_sample({"odoo/Dockerfile": dockerfile}, "break the build")
    second = deploy(deploy_env, users["alice"])
    assert second.job.status == "failed"
    assert "The automatic rollback to deployment" in second.job.reason and "failed too" in second.job.reason
    assert "is no longer on the server" in second.job.reason
    assert "degraded" in second.job.reason
    assert second.status == "degraded"
    deploy_env.refresh_from_db()
    assert deploy_env.degraded
    assert Event.objects.filter(deployment=second, kind="deploy.degraded", severity="critical").exists()
    # A good deploy clears it.
    third = deploy(deploy_env, users["alice"], ref=lab_sample.sample_initial_sha)
    assert third.job.status == "succeeded", third.job.reason
    deploy_env.refresh_from_db()
    assert not deploy_env.degraded and deploy_env.current_deployment_id == third.pk
    assert health(lab1) == {"status": "pass"}
