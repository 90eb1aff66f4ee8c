"""Disks that don't fill: old images go after a successful deploy, and a deploy refuses on a nearly full host.

Real worker, real lab host (SSH + Docker): the tags left on the host are read with the lab's own docker CLI.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from deployments.models import Deployment
from deployments.pipeline import panel_made_tag
from deployments.services import start_rollback
from panel.inventory.choices import EnvironmentState
from panel.inventory.services import environment_state
from tests.conftest import celery_worker, wait_for_log
from tests.deploy_fixtures import KEY, deploy, health, log_text
from tests.lab_helpers import wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

BUMP = "odoo/custom/panel-disk-bump.txt"  # copied into the image, part of no addon: a new image, no addon update


def odoo_tags(host: Any) -> set[str]:
    listed = host.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", f"{KEY}-odoo", check=True).stdout
    return set(listed.split())


def image_ids(host: Any) -> set[str]:
    return set(host.docker("image", "ls", "-q", "--no-trunc", check=True).stdout.split())


def running_image(host: Any) -> str:
    """The id of the image the odoo container runs."""
    return host.docker("inspect", "--format", "{{.Image}}", f"{KEY}-odoo-1", check=True).stdout.strip()


def test_it_keeps_only_the_images_of_the_last_five_deploys_and_rolls_back_to_the_oldest_kept(
    deploy_env, lab1, lab_sample, users, client
) -> None:
    # Staging: no database dump before each update, so eight deploys stay quick.
    deploy_env.kind = "staging"
    deploy_env.save(update_fields=["kind"])
    deployments: list[Deployment] = []
    for number in range(8):
        if number:
            lab_sample.commit_to_sample({BUMP: f"{number}\n"}, f"bump {number}")
        deployment = deploy(deploy_env, users["alice"])
        assert deployment.job.status == "succeeded", deployment.job.reason + log_text(deployment)[-3000:]
        deployments.append(deployment)
    assert len({d.images["odoo"]["id"] for d in deployments}) == 8, "each commit built an image of its own"
    removed, kept = deployments[:3], deployments[3:]
    for deployment in deployments:
        deployment.refresh_from_db()

    # On the host: the panel's tags of the last five deployments (pinned and per commit), no other panel tag.
    tags = odoo_tags(lab1)
    expected = {f"{KEY}-odoo:panel-{d.pk}" for d in kept} | {f"{KEY}-odoo:{d.commit[:12]}" for d in kept}
    assert {tag for tag in tags if panel_made_tag(deploy_env, tag)} == expected
    # The older images are deleted, not only untagged (unless something else still names them).
    others = {lab1.docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip() for tag in tags - expected}
    ids = image_ids(lab1)
    assert all(d.images["odoo"]["id"] not in ids for d in removed if d.images["odoo"]["id"] not in others)
    assert all(d.images["odoo"]["id"] in ids for d in kept)
    assert running_image(lab1) == kept[-1].images["odoo"]["id"]

    # Recorded on each deployment, and said in the last deploy's log.
    assert all(d.images_pruned_at is not None for d in removed) and all(d.images_pruned_at is None for d in kept)
    last = deployments[-1]
    assert [s["name"] for s in last.job.result["steps"]][-1] == "Clean up images"
    assert "Clean up images" not in [s["name"] for s in deployments[2].job.result["steps"][:-1]]
    text = log_text(last)
    assert f"Kept the images of deployments #{last.pk}, " in text and "(DEPLOY_KEEP_IMAGES=5)" in text
    assert f"#{removed[2].pk} can no longer be rolled back to" in text, text[-2000:]

    # The pruned ones are no rollback targets any more, and say why; the kept ones still are.
    client.force_login(users["alice"])
    page = client.get(f"/environments/{deploy_env.pk}/").content.decode()
    for deployment in removed:
        assert f"/deployments/{deployment.pk}/rollback/" not in page
    for deployment in kept[:-1]:
        assert f"/deployments/{deployment.pk}/rollback/" in page
    assert page.count('data-testid="images-pruned"') == 3
    detail = client.get(f"/deployments/{removed[0].pk}/").content.decode()
    assert "can no longer be rolled back to" in detail and "Roll back to this" not in detail
    answer = client.get(f"/deployments/{removed[0].pk}/rollback/", follow=True).content.decode()
    assert f"The images of deployment #{removed[0].pk} were removed from the server" in answer
    body = client.get(f"/api/v1/deployments/{removed[0].pk}/").json()
    assert (
        body["images_pruned_at"] and client.get(f"/api/v1/deployments/{kept[0].pk}/").json()["images_pruned_at"] is None
    )
    response = client.post(f"/api/v1/deployments/{removed[1].pk}/rollback/", content_type="application/json")
    assert response.status_code == 400 and "deploy its commit" in response.json()["detail"], response.content

    # A rollback to the oldest kept deployment puts its very image back.
    rollback = start_rollback(deployment=kept[0], actor=users["alice"])
    wait_job(rollback.job, timeout=300)
    rollback.job.refresh_from_db()
    assert rollback.job.status == "succeeded", rollback.job.reason
    assert running_image(lab1) == kept[0].images["odoo"]["id"]
    assert health(lab1) == {"status": "pass"}
    deploy_env.refresh_from_db()
    assert deploy_env.current_deployment_id == kept[0].pk


def test_it_refuses_to_deploy_before_building_on_a_host_with_too_little_free_disk(
    deploy_env, jobs_worker, lab1, lab_sample, users, client, process_logs: Path
) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.job.status == "succeeded", first.job.reason
    # The lab hosts live on this machine's disk: ask for more than it has, through the worker's environment.
    threshold = shutil.disk_usage(lab1.home).free // 2**20 + 50_000
    jobs_worker.stop()  # the next test's jobs_worker fixture starts it again
    worker = celery_worker("jobs-low-disk", "jobs", process_logs)
    worker.env = {"DEPLOY_MIN_FREE_DISK_MB": str(threshold)}
    worker.start()
    try:
        wait_for_log(worker, "ready.")
        lab_sample.commit_to_sample({BUMP: "never built\n"}, "a commit the full disk keeps out")
        second = deploy(deploy_env, users["alice"])
    finally:
        worker.stop()
    assert second.job.status == "failed" and second.status == "failed_no_rollback", second.job.reason
    reason = second.job.reason
    assert reason.startswith("Step “Check the server” failed: Not enough free disk on the server: "), reason
    docker_root = lab1.docker("info", "--format", "{{.DockerRootDir}}", check=True).stdout.strip()
    free = shutil.disk_usage(lab1.home).free // 2**20
    for path, what in ((f"~/doodba-panel/{KEY}", "the deploy directory"), (docker_root, "Docker's data root")):
        found = re.search(rf"{re.escape(path)} \({re.escape(what)}\) has (\d+) MB free, {threshold} MB needed", reason)
        assert found, reason
        assert abs(int(found.group(1)) - free) < 2048, "the free space reported is the host's"
    assert "Nothing was changed on the server; the running version is untouched." in reason
    assert [(s["name"], s["status"]) for s in second.job.result["steps"]] == [("Check the server", "failed")]
    # Nothing was fetched, built or restarted: the environment runs the first deployment, as its state says.
    assert not second.commit and not second.images
    head = lab1.ssh("git", "-C", f"doodba-panel/{KEY}/src", "rev-parse", "HEAD", check=True).stdout.strip()
    assert head == first.commit
    assert not any(tag.endswith(f":panel-{second.pk}") for tag in odoo_tags(lab1))
    assert running_image(lab1) == first.images["odoo"]["id"]
    assert health(lab1) == {"status": "pass"}
    deploy_env.refresh_from_db()
    assert deploy_env.current_deployment_id == first.pk
    assert environment_state(deploy_env).code == EnvironmentState.RUNNING
    # The deployment page says it too.
    client.force_login(users["alice"])
    page = client.get(f"/deployments/{second.pk}/").content.decode()
    assert f"{threshold} MB needed" in page
