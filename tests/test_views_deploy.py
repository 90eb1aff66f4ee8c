"""Deployment pages: tenancy (404 for other organizations), roles, the customer's reduced history, busy targets."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from deployments.choices import DeploymentKind, DeploymentStatus, Trigger
from deployments.models import Deployment
from deployments.services import start_deploy
from panel.accounts.models import AuditEvent
from panel.inventory.models import Environment
from panel.jobs.choices import JobKind, JobStatus
from panel.jobs.models import Job, JobLogLine

pytestmark = pytest.mark.django_db

OLD_COMMIT = "1111111111aaaaaaaaaa2222222222bbbbbbbbbb"
NEW_COMMIT = "3333333333cccccccccc4444444444dddddddddd"
IMAGE_ID = "sha256:feedfacecafebeef0123456789abcdef0123456789abcdef0123456789abcdef"
SECRET_VALUE = "s3cr3t-value-never-rendered"
LOG_TEXT = "Building odoo from /home/deploy/doodba-panel"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_deployment(environment: Environment, commit: str, subject: str, minutes_ago: int, **fields: Any) -> Deployment:
    """A finished deployment with its job, images, configuration and a log line."""
    created = timezone.now() - timedelta(minutes=minutes_ago)
    job = Job.objects.create(
        kind=JobKind.DEPLOY,
        organization=environment.project.organization,
        environment=environment,
        status=JobStatus.SUCCEEDED,
        created_at=created,
        started_at=created,
        finished_at=created + timedelta(seconds=42),
        last_seq=1,
        result={"steps": [{"name": "Fetch code", "status": "succeeded", "seconds": 1.5, "first_seq": 1,
                           "last_seq": 1}]},
    )  # fmt: skip
    JobLogLine.objects.create(job=job, seq=1, text=LOG_TEXT)
    values: dict[str, Any] = {
        "environment": environment,
        "job": job,
        "ref": "main",
        "commit": commit,
        "commit_subject": subject,
        "status": DeploymentStatus.SUCCEEDED,
        "images": {"odoo": {"ref": f"shop-16-0-prod-odoo:panel-{minutes_ago}", "id": IMAGE_ID}},
        "config": {
            "compose_files": ["prod.yaml"],
            "workers": 2,
            "env_vars": {"LOG_LEVEL": "info"},
            "secret_names": ["ADMIN_PASSWORD", "SMTP_PASSWORD"],
            "override": {"services": {"odoo": {"environment": {"LOG_LEVEL": "info"}}}},
        },
        "changes": {"commits": [f"{commit} {subject}"]},
        "trigger": Trigger.BUTTON,
        "created_at": created,
        "finished_at": created + timedelta(seconds=42),
    }
    values.update(fields)
    return Deployment.objects.create(**values)


@pytest.fixture
def history(inventory: dict[str, Any], users: dict[str, Any]) -> dict[str, Deployment]:
    """Two successful deployments of A1's environment (the newer one live) and one of B's."""
    environment = inventory["env_a"]
    environment.set_secrets({"SMTP_PASSWORD": SECRET_VALUE})
    environment.save()
    old = make_deployment(environment, OLD_COMMIT, "Add the shop module", 60, triggered_by=users["alice"])
    new = make_deployment(
        environment,
        NEW_COMMIT,
        "Raise the workers",
        10,
        previous=old,
        triggered_by=users["olga"],
        config={**old.config, "workers": 4, "env_vars": {"LOG_LEVEL": "debug"}, "secret_names": ["ADMIN_PASSWORD"]},
    )
    Environment.objects.filter(pk=environment.pk).update(current_deployment=new)
    other = make_deployment(inventory["env_b"], NEW_COMMIT, "Bravo's commit", 5)
    return {"old": old, "new": new, "b": other}


def deploy_urls(inventory: dict[str, Any], history: dict[str, Deployment]) -> dict[str, list[tuple[str, str]]]:
    """(method, url) of the deployment pages and actions of A1's environment."""
    environment, old, new = inventory["env_a"], history["old"], history["new"]
    compare = f"{reverse('environment_compare', args=[environment.pk])}?from={old.pk}&to={new.pk}"
    read = [
        ("get", reverse("deployment_detail", args=[new.pk])),
        ("get", reverse("deployment_detail", args=[old.pk])),
        ("get", compare),
        ("get", reverse("job_detail", args=[new.job.pk])),
    ]
    change = [
        ("post", reverse("environment_deploy", args=[environment.pk])),
        ("post", reverse("environment_promote", args=[environment.pk])),
        ("get", reverse("deployment_rollback", args=[old.pk])),
        ("post", reverse("deployment_rollback", args=[old.pk])),
        ("post", reverse("job_cancel", args=[new.job.pk])),
    ]
    return {"read": read, "change": change}


def assert_all_404(client: Client, urls: list[tuple[str, str]]) -> None:
    for method, url in urls:
        response = getattr(client, method)(url)
        assert response.status_code == 404, f"{method.upper()} {url} answered {response.status_code}"


def assert_no_new_deployment(inventory: dict[str, Any]) -> None:
    assert Deployment.objects.filter(environment=inventory["env_a"]).count() == 2
    assert not Job.objects.filter(environment=inventory["env_a"], status__in=["queued", "running"]).exists()


def test_it_answers_404_to_another_organization_on_every_deployment_url(
    users: Any, inventory: Any, history: Any
) -> None:
    client = client_for(users["bob"])
    urls = deploy_urls(inventory, history)
    assert_all_404(client, urls["read"] + urls["change"])
    assert_no_new_deployment(inventory)
    # Bob's own deployment page works, and A's deployment ids mixed into his compare URL do not.
    assert client.get(reverse("deployment_detail", args=[history["b"].pk])).status_code == 200
    mixed = (
        f"{reverse('environment_compare', args=[inventory['env_b'].pk])}?from={history['old'].pk}&to={history['b'].pk}"
    )
    assert client.get(mixed).status_code == 404


def test_it_shows_a_customer_a_reduced_history_and_refuses_her_every_action(
    users: Any, inventory: Any, history: Any
) -> None:
    client = client_for(users["carol"])
    response = client.get(reverse("environment_detail", args=[inventory["env_a"].pk]))
    assert response.status_code == 200
    page = response.content.decode()
    # The reduced history: kind, status, short commit, subject.
    assert history["new"].short_commit in page
    assert "Raise the workers" in page and "Add the shop module" in page
    assert "running " + history["new"].short_commit in page
    # No logs, configuration, images or links to jobs and deployments; no usernames of the provider's staff.
    for hidden in (LOG_TEXT, IMAGE_ID, "panel-60", "SMTP_PASSWORD", SECRET_VALUE, "LOG_LEVEL", "olga", "/jobs/",
                   "/deployments/", "Roll back", "compare/", "Deploy</button>", NEW_COMMIT):  # fmt: skip
        assert hidden not in page, hidden
    urls = deploy_urls(inventory, history)
    assert_all_404(client, urls["read"] + urls["change"])
    assert_no_new_deployment(inventory)


def test_it_lets_a_viewer_see_deployments_but_not_start_them(users: Any, inventory: Any, history: Any) -> None:
    client = client_for(users["victor"])
    page = client.get(reverse("environment_detail", args=[inventory["env_a"].pk])).content.decode()
    assert reverse("deployment_detail", args=[history["new"].pk]) in page
    assert "Deploy</button>" not in page
    assert "Roll back" not in page
    for method, url in deploy_urls(inventory, history)["read"]:
        assert getattr(client, method)(url).status_code == 200, url
    assert_all_404(client, deploy_urls(inventory, history)["change"])
    assert_no_new_deployment(inventory)


def test_it_shows_a_deployment_with_secret_names_only(users: Any, inventory: Any, history: Any) -> None:
    client = client_for(users["olga"])
    response = client.get(reverse("deployment_detail", args=[history["new"].pk]))
    page = response.content.decode()
    assert NEW_COMMIT in page and "Raise the workers" in page
    assert IMAGE_ID in page or IMAGE_ID[:20] in page
    assert "ADMIN_PASSWORD" in page
    assert SECRET_VALUE not in page
    assert reverse("job_log_download", args=[history["new"].job.pk]) in page
    assert f'data-job-steps="{history["new"].job.pk}"' in page
    assert "Fetch code" in page
    # The rendered override is not shown as such; the environment variables are.
    assert "LOG_LEVEL=debug" in page
    assert "&quot;services&quot;" not in page


def test_it_compares_two_deployments_without_secret_values(users: Any, inventory: Any, history: Any) -> None:
    client = client_for(users["alice"])
    url = reverse("environment_compare", args=[inventory["env_a"].pk])
    # The order of the two ids does not matter.
    response = client.get(f"{url}?from={history['new'].pk}&to={history['old'].pk}")
    page = response.content.decode()
    assert response.status_code == 200
    assert "Raise the workers" in page
    assert "Odoo workers" in page
    assert "SMTP_PASSWORD" in page  # removed secret, by name
    assert SECRET_VALUE not in page
    assert "LOG_LEVEL" in page and "debug" in page
    assert client.get(f"{url}?from=x&to={history['old'].pk}").status_code == 404


def test_it_rolls_back_after_a_confirmation_step(users: Any, inventory: Any, history: Any) -> None:
    client = client_for(users["olga"])
    environment = inventory["env_a"]
    page = client.get(reverse("environment_detail", args=[environment.pk])).content.decode()
    rollback_url = reverse("deployment_rollback", args=[history["old"].pk])
    assert rollback_url in page
    # The live deployment is no rollback target.
    assert reverse("deployment_rollback", args=[history["new"].pk]) not in page
    confirm = client.get(rollback_url)
    assert confirm.status_code == 200 and b"Roll back" in confirm.content
    assert Deployment.objects.filter(environment=environment).count() == 2
    response = client.post(rollback_url)
    rollback = Deployment.objects.filter(environment=environment).order_by("-pk").first()
    assert rollback is not None and rollback.kind == DeploymentKind.ROLLBACK
    assert rollback.source_id == history["old"].pk
    assert response.status_code == 302 and response["Location"] == reverse("deployment_detail", args=[rollback.pk])
    assert AuditEvent.objects.filter(action="environment.rollback", actor=users["olga"]).exists()


def test_it_deploys_by_post_and_follows_the_new_deployment(users: Any, inventory: Any, history: Any) -> None:
    client = client_for(users["alice"])
    environment = inventory["env_a"]
    url = reverse("environment_deploy", args=[environment.pk])
    assert client.get(url).status_code == 405
    bad = client.post(url, {"ref": "--upload-pack=touch /tmp/x"}, follow=True)
    assert Deployment.objects.filter(environment=environment).count() == 2
    assert b"errorlist" in bad.content or b"message-error" in bad.content
    response = client.post(url, {"ref": "v1.2"})
    deployment = Deployment.objects.filter(environment=environment).order_by("-pk").first()
    assert deployment is not None and deployment.ref == "v1.2" and deployment.triggered_by == users["alice"]
    assert response["Location"] == reverse("deployment_detail", args=[deployment.pk])


def test_it_links_the_running_job_when_the_environment_is_busy(users: Any, inventory: Any, history: Any) -> None:
    environment = inventory["env_a"]
    # No worker runs in this test: the job stays queued and holds environment:<id>.
    running = start_deploy(environment=environment, actor=users["alice"])
    job_url = reverse("job_detail", args=[running.job.pk])
    client = client_for(users["olga"])
    page = client.get(reverse("environment_detail", args=[environment.pk])).content.decode()
    running_block = re.search(r'data-testid="running-job">(.*?)</p>', page, re.S)
    assert running_block is not None and f'href="{job_url}"' in running_block.group(1)
    assert "deploying" in page
    assert reverse("job_cancel", args=[running.job.pk]) in page
    assert "Deploy</button>" not in page
    response = client.post(reverse("environment_deploy", args=[environment.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("environment_detail", args=[environment.pk])
    messages = [str(message) for message in response.context["messages"]]
    assert any(job_url in message for message in messages), messages
    assert Deployment.objects.filter(environment=environment).count() == 3
    # Promotion and rollback are refused the same way.
    response = client.post(reverse("deployment_rollback", args=[history["old"].pk]), follow=True)
    assert any(job_url in str(message) for message in response.context["messages"])
    assert Deployment.objects.filter(environment=environment).count() == 3


def test_it_cancels_the_running_job_for_operators_only(users: Any, inventory: Any, history: Any) -> None:
    environment = inventory["env_a"]
    running = start_deploy(environment=environment, actor=users["alice"])
    url = reverse("job_cancel", args=[running.job.pk])
    assert client_for(users["victor"]).post(url).status_code == 404
    running.job.refresh_from_db()
    assert running.job.status == JobStatus.QUEUED
    response = client_for(users["olga"]).post(url, {"next": "https://evil.example/"})
    assert response["Location"] == reverse("job_detail", args=[running.job.pk])
    running.job.refresh_from_db()
    assert running.job.status == JobStatus.CANCELED
    assert AuditEvent.objects.filter(action="job.cancel_requested", actor=users["olga"]).exists()


def test_it_offers_promotion_only_from_a_deployed_staging(users: Any, inventory: Any, history: Any) -> None:
    environment = inventory["env_a"]
    client = client_for(users["alice"])
    url = reverse("environment_detail", args=[environment.pk])
    assert "Promote from staging" not in client.get(url).content.decode()
    staging = Environment.objects.create(
        project=environment.project, server=environment.server, name="staging", kind="staging",
        compose_files=["test.yaml"], compose_project="shop-16-0-staging",
    )  # fmt: skip
    assert "Promote from staging" not in client.get(url).content.decode()
    staged = make_deployment(staging, OLD_COMMIT, "Staged change", 3)
    Environment.objects.filter(pk=staging.pk).update(current_deployment=staged)
    page = client.get(url).content.decode()
    assert "Promote from staging" in page and staged.short_commit in page
    assert "already running here" not in page
    # Staging runs what production runs: still offered (to re-apply), and said.
    Deployment.objects.filter(pk=staged.pk).update(commit=history["new"].commit)
    assert "(already running here)" in client.get(url).content.decode()
    Deployment.objects.filter(pk=staged.pk).update(commit=OLD_COMMIT)
    # Not on the staging environment itself.
    assert "Promote from staging" not in client.get(reverse("environment_detail", args=[staging.pk])).content.decode()
    response = client.post(reverse("environment_promote", args=[environment.pk]))
    promoted = Deployment.objects.filter(environment=environment).order_by("-pk").first()
    assert promoted is not None and promoted.kind == DeploymentKind.PROMOTE and promoted.ref == OLD_COMMIT
    assert response["Location"] == reverse("deployment_detail", args=[promoted.pk])


def test_it_shows_degraded_in_red_and_not_deployed(users: Any, inventory: Any) -> None:
    client = client_for(users["alice"])
    environment = inventory["env_a"]
    page = client.get(reverse("environment_detail", args=[environment.pk])).content.decode()
    assert "not deployed" in page
    Environment.objects.filter(pk=environment.pk).update(degraded=True)
    page = client.get(reverse("environment_detail", args=[environment.pk])).content.decode()
    assert 'class="badge badge-alarm"' in page and ">degraded<" in page


def test_it_edits_auto_deploy_and_known_hosts_and_never_renders_the_webhook_secret(users: Any, inventory: Any) -> None:
    client = client_for(users["alice"])
    environment, project = inventory["env_a"], inventory["project_a"]
    form = client.get(reverse("environment_edit", args=[environment.pk])).content.decode()
    assert 'name="auto_deploy"' in form and "keep it off for production" in form.lower()
    assert not environment.auto_deploy
    response = client.post(
        reverse("environment_edit", args=[environment.pk]),
        {"kind": "production", "git_ref": "main", "compose_files_text": "prod.yaml", "workers": 2,
         "cron_threads": 1, "backup_keep_daily": 7, "auto_deploy": "on"},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    environment.refresh_from_db()
    assert environment.auto_deploy
    line = "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    response = client.post(
        reverse("project_edit", args=[project.pk]),
        {"name": "Shop", "git_url": "/srv/git/x.git", "default_branch": "main", "odoo_version": "16.0",
         "git_known_hosts": line},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    project.refresh_from_db()
    assert project.git_known_hosts.strip() == line
    page = client.get(reverse("project_detail", args=[project.pk])).content.decode()
    assert f"/hooks/git/{project.webhook_id}/" in page
    assert project.webhook_secret not in page
    assert project.webhook_secret not in client.get(reverse("project_edit", args=[project.pk])).content.decode()
    customer_page = client_for(users["carol"]).get(reverse("project_detail", args=[project.pk])).content.decode()
    assert project.webhook_id not in customer_page
