"""Deployments through the API: deploy, promote and roll back (202 / 409 / 400), the deployment records each role
sees, compare, and the deployment fields of environments and projects (auto-deploy, state, webhook URL and secret).

No worker runs here, so the jobs these requests queue stay queued; deployments that "ran" are made directly.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from deployments.models import Deployment
from panel.accounts.models import AuditEvent
from panel.inventory.models import Environment
from panel.jobs.choices import JobKind, JobStatus
from panel.jobs.models import Job

pytestmark = pytest.mark.django_db

NOT_FOUND = {"detail": "Not found."}
SHA1, SHA2 = "1" * 40, "2" * 40
CUSTOMER_FIELDS = {"id", "environment", "kind", "status", "commit", "commit_subject", "trigger", "created_at",
                   "finished_at"}  # fmt: skip
BAD_REFS = ["; touch /tmp/x", "$(id)", "-oProxyCommand=x", "--upload-pack=x", "a..b", "main\n", "`id`", "a b"]


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def make_deployment(environment: Environment, commit: str, *, status: str = "succeeded", age: int = 0) -> Deployment:
    """A deployment that ran (its job ended), as the worker would have recorded it."""
    job = Job.objects.create(
        kind=JobKind.DEPLOY,
        organization=environment.project.organization,
        environment=environment,
        status=JobStatus.SUCCEEDED if status == "succeeded" else JobStatus.FAILED,
        reason="" if status == "succeeded" else "Step “Start” failed",
        result={"steps": [{"name": "Fetch code", "status": "succeeded", "seconds": 1.5, "first_seq": 1,
                           "last_seq": 4}]},
    )  # fmt: skip
    return Deployment.objects.create(
        environment=environment,
        job=job,
        status=status,
        ref="main",
        commit=commit,
        commit_subject=f"Commit {commit[:4]}",
        images={"odoo": {"ref": "shop-odoo:panel-1", "id": "sha256:" + "a" * 64}},
        config={"workers": 2, "env_vars": {"PLAIN": "x"}, "secret_names": ["PGPASSWORD"], "override": {}},
        changes={"commits": [f"{commit} Commit {commit[:4]}"]},
        created_at=timezone.now() - timedelta(minutes=age),
        finished_at=timezone.now() - timedelta(minutes=age) + timedelta(seconds=30),
    )


@pytest.fixture
def history(inventory: dict[str, Any]) -> dict[str, Any]:
    """Two deployments of A1's environment (the second live) and one of B's."""
    env_a = inventory["env_a"]
    first = make_deployment(env_a, SHA1, age=10)
    second = make_deployment(env_a, SHA2, age=5)
    second.config = {**second.config, "workers": 4}
    second.save()
    Environment.objects.filter(pk=env_a.pk).update(current_deployment=second)
    other = make_deployment(inventory["env_b"], SHA1)
    return {"first": first, "second": second, "b": other}


def active_jobs(environment: Environment) -> int:
    return Job.objects.filter(environment=environment, status__in=["queued", "running"]).count()


def test_it_starts_a_deployment_and_answers_409_while_one_is_queued(users: Any, inventory: Any) -> None:
    env = inventory["env_a"]
    url = f"/api/v1/environments/{env.pk}/deploy/"
    first = client_for(users["olga"]).post(url, {}, format="json")
    assert first.status_code == 202, first.content
    body = first.json()
    assert body["job"]["status"] == "queued"
    assert body["job"]["kind"] == "deploy"
    assert body["deployment"]["job"] == body["job"]["id"]
    assert body["deployment"]["ref"] == "main"  # the environment's git ref
    assert body["deployment"]["trigger"] == "api"
    assert body["deployment"]["triggered_by"] == "olga"
    assert body["deployment"]["status"] == "running"
    second = client_for(users["alice"]).post(url, {"ref": "v1.2"}, format="json")
    assert second.status_code == 409, second.content
    assert second.json()["job"] == body["job"]["id"]
    assert "already running" in second.json()["detail"]
    assert active_jobs(env) == 1
    assert Deployment.objects.filter(environment=env).count() == 1
    assert AuditEvent.objects.filter(action="environment.deploy", object_id=str(env.pk)).count() == 1
    # The environment shows it is deploying.
    assert client_for(users["carol"]).get(f"/api/v1/environments/{env.pk}/").json()["state"] == "deploying"


def test_it_deploys_a_given_ref(users: Any, inventory: Any) -> None:
    response = client_for(users["alice"]).post(
        f"/api/v1/environments/{inventory['env_a'].pk}/deploy/", {"ref": "release/1.0"}, format="json"
    )
    assert response.status_code == 202, response.content
    assert Deployment.objects.get(pk=response.json()["deployment"]["id"]).ref == "release/1.0"


@pytest.mark.parametrize("ref", BAD_REFS)
def test_it_refuses_bad_refs_before_creating_a_job(users: Any, inventory: Any, ref: str) -> None:
    response = client_for(users["alice"]).post(
        f"/api/v1/environments/{inventory['env_a'].pk}/deploy/", {"ref": ref}, format="json"
    )
    assert response.status_code == 400, response.content
    assert "ref" in response.json()
    assert not Job.objects.exists()
    assert not Deployment.objects.exists()


def test_it_refuses_a_stored_bad_ref_without_creating_a_job(users: Any, inventory: Any) -> None:
    # A git_ref that slipped into the database (e.g. an older version) is checked again by the service.
    Environment.objects.filter(pk=inventory["env_a"].pk).update(git_ref="$(id)")
    response = client_for(users["alice"]).post(f"/api/v1/environments/{inventory['env_a'].pk}/deploy/")
    assert response.status_code == 400, response.content
    assert "ref" in response.json()
    assert not Job.objects.exists()


def test_it_answers_404_to_other_orgs_and_to_roles_that_cannot_deploy(users: Any, inventory: Any, history: Any) -> None:
    env, first, second = inventory["env_a"], history["first"], history["second"]
    posts = [
        f"/api/v1/environments/{env.pk}/deploy/",
        f"/api/v1/environments/{env.pk}/promote/",
        f"/api/v1/deployments/{first.pk}/rollback/",
    ]
    for name in ("bob", "victor", "carol"):
        client = client_for(users[name])
        for url in posts:
            response = client.post(url, {"ref": "main"}, format="json")
            assert response.status_code == 404, (name, url, response.content)
            assert response.json() == NOT_FOUND
    bob = client_for(users["bob"])
    for url in (
        f"/api/v1/deployments/{first.pk}/",
        f"/api/v1/deployments/{first.pk}/compare/?with={second.pk}",
        f"/api/v1/deployments/{history['b'].pk}/compare/?with={second.pk}",
    ):
        response = bob.get(url)
        assert response.status_code == 404, (url, response.content)
        assert response.json() == NOT_FOUND
    listed = bob.get("/api/v1/deployments/").json()["results"]
    assert [item["id"] for item in listed] == [history["b"].pk]
    assert bob.get(f"/api/v1/deployments/?environment={env.pk}").json()["results"] == []
    assert not Job.objects.filter(status="queued").exists()


def test_it_shows_staff_the_whole_deployment(users: Any, inventory: Any, history: Any) -> None:
    for name in ("alice", "victor"):
        client = client_for(users[name])
        listed = client.get(f"/api/v1/deployments/?environment={inventory['env_a'].pk}").json()["results"]
        assert [item["id"] for item in listed] == [history["second"].pk, history["first"].pk]
        detail = client.get(f"/api/v1/deployments/{history['second'].pk}/").json()
        assert detail["commit"] == SHA2
        assert detail["status"] == "succeeded"
        assert detail["job"] == history["second"].job_id
        assert detail["images"]["odoo"]["ref"] == "shop-odoo:panel-1"
        assert detail["config"]["secret_names"] == ["PGPASSWORD"]
        assert detail["steps"] == [{"name": "Fetch code", "status": "succeeded", "seconds": 1.5, "first_seq": 1,
                                    "last_seq": 4}]  # fmt: skip
        assert detail["previous"] is None
    assert client_for(users["alice"]).get("/api/v1/deployments/?environment=abc").status_code == 400


def test_it_shows_customers_only_status_fields(users: Any, inventory: Any, history: Any) -> None:
    carol = client_for(users["carol"])
    listed = carol.get("/api/v1/deployments/").json()["results"]
    assert [item["id"] for item in listed] == [history["second"].pk, history["first"].pk]
    for item in [*listed, carol.get(f"/api/v1/deployments/{history['first'].pk}/").json()]:
        assert set(item) == CUSTOMER_FIELDS
        assert not set(item) & {"config", "images", "job", "steps", "changes", "ref", "triggered_by", "rollback"}
        assert item["commit"] in (SHA1[:12], SHA2[:12])
    # No logs, no compare.
    assert carol.get(f"/api/v1/jobs/{history['first'].job_id}/lines/").status_code == 404
    response = carol.get(f"/api/v1/deployments/{history['second'].pk}/compare/?with={history['first'].pk}")
    assert response.status_code == 404


def test_it_compares_two_deployments(users: Any, history: Any) -> None:
    alice = client_for(users["alice"])
    url = f"/api/v1/deployments/{history['first'].pk}/compare/?with={history['second'].pk}"
    response = alice.get(url)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["from"] == {"id": history["first"].pk, "commit": SHA1}
    assert body["to"] == {"id": history["second"].pk, "commit": SHA2}
    assert body["commits"] == [f"{SHA2} Commit 2222"]
    assert body["config"] == {"workers": {"before": 2, "after": 4}}
    # Either order gives the same answer.
    reverse = alice.get(f"/api/v1/deployments/{history['second'].pk}/compare/?with={history['first'].pk}")
    assert reverse.json() == body
    assert alice.get(f"/api/v1/deployments/{history['first'].pk}/compare/").status_code == 400
    assert alice.get(f"/api/v1/deployments/{history['first'].pk}/compare/?with=x").status_code == 400
    # Another organization's deployment does not exist for alice.
    assert alice.get(f"/api/v1/deployments/{history['first'].pk}/compare/?with={history['b'].pk}").status_code == 404


def test_it_rolls_back_to_a_successful_deployment_only(users: Any, inventory: Any, history: Any) -> None:
    alice = client_for(users["alice"])
    failed = make_deployment(inventory["env_a"], "3" * 40, status="failed")
    refused = alice.post(f"/api/v1/deployments/{failed.pk}/rollback/")
    assert refused.status_code == 400, refused.content
    assert "successful deployment" in refused.json()["detail"]
    assert active_jobs(inventory["env_a"]) == 0
    started = alice.post(f"/api/v1/deployments/{history['first'].pk}/rollback/")
    assert started.status_code == 202, started.content
    deployment = started.json()["deployment"]
    assert deployment["kind"] == "rollback"
    assert deployment["source"] == history["first"].pk
    assert deployment["ref"] == SHA1
    assert deployment["previous"] == history["second"].pk
    assert started.json()["job"]["kind"] == "rollback"
    busy = alice.post(f"/api/v1/deployments/{history['first'].pk}/rollback/")
    assert busy.status_code == 409
    assert busy.json()["job"] == started.json()["job"]["id"]


def test_it_promotes_what_staging_runs(users: Any, inventory: Any, history: Any) -> None:
    alice = client_for(users["alice"])
    prod = inventory["env_a"]
    url = f"/api/v1/environments/{prod.pk}/promote/"
    nothing = alice.post(url)
    assert nothing.status_code == 400, nothing.content
    assert "staging" in nothing.json()["detail"]
    staging = Environment.objects.create(
        project=prod.project, server=prod.server, name="staging", kind="staging", compose_files=["test.yaml"],
        compose_project="shop-16-0-staging",
    )  # fmt: skip
    staged = make_deployment(staging, "4" * 40)
    Environment.objects.filter(pk=staging.pk).update(current_deployment=staged)
    response = alice.post(url)
    assert response.status_code == 202, response.content
    assert response.json()["deployment"]["kind"] == "promote"
    assert response.json()["deployment"]["ref"] == "4" * 40
    assert response.json()["deployment"]["environment"] == prod.pk
    assert alice.post(url).status_code == 409


def test_it_exposes_deployment_fields_of_environments(users: Any, inventory: Any) -> None:
    env = inventory["env_a"]
    url = f"/api/v1/environments/{env.pk}/"
    alice, carol = client_for(users["alice"]), client_for(users["carol"])
    staff = alice.get(url).json()
    assert staff["auto_deploy"] is False
    assert staff["degraded"] is False
    assert staff["current_deployment"] is None
    assert staff["state"] == "not deployed"
    assert staff["webhook_url"] == f"http://testserver/hooks/git/{env.project.webhook_id}/"
    assert set(carol.get(url).json()) == {
        "id", "name", "kind", "domain", "project", "state", "state_detail", "health_state", "uptime",
    }  # fmt: skip

    assert alice.patch(url, {"auto_deploy": True}, format="json").json()["auto_deploy"] is True
    env.refresh_from_db()
    assert env.auto_deploy is True
    assert AuditEvent.objects.filter(action="environment.updated", detail__fields=["auto_deploy"]).exists()
    # Viewers and customers cannot turn it off; degraded is read-only.
    for name in ("victor", "carol", "bob"):
        assert client_for(users[name]).patch(url, {"auto_deploy": False}, format="json").status_code == 404
    alice.patch(url, {"degraded": True}, format="json")
    env.refresh_from_db()
    assert env.auto_deploy is True and env.degraded is False

    live = make_deployment(env, SHA1)
    Environment.objects.filter(pk=env.pk).update(current_deployment=live)
    staff = alice.get(url).json()
    assert staff["state"] == "running"
    assert staff["current_deployment"] == {"id": live.pk, "commit": SHA1}
    Environment.objects.filter(pk=env.pk).update(degraded=True)
    assert alice.get(url).json()["state"] == "degraded"
    assert carol.get(url).json()["state"] == "degraded"
    assert [item["state"] for item in alice.get("/api/v1/environments/").json()["results"]] == ["degraded"]


KNOWN_HOSTS = "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"


def test_it_accepts_only_valid_git_known_hosts(users: Any, inventory: Any) -> None:
    alice = client_for(users["alice"])
    url = f"/api/v1/projects/{inventory['project_a'].pk}/"
    response = alice.patch(url, {"git_known_hosts": KNOWN_HOSTS}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["git_known_hosts"] == KNOWN_HOSTS
    for bad in ("-oProxyCommand=x ssh-ed25519 AAAA", "git.example.com ssh-ed25519 AAAA$(id)AAAAAAAAAAAAAAAAAAAAA",
                "x" * 70_000):  # fmt: skip
        response = alice.patch(url, {"git_known_hosts": bad}, format="json")
        assert response.status_code == 400, (bad[:40], response.content)
        assert "git_known_hosts" in response.json()
    inventory["project_a"].refresh_from_db()
    assert inventory["project_a"].git_known_hosts == KNOWN_HOSTS


def test_it_shows_the_webhook_secret_only_once_when_rotating_it(users: Any, inventory: Any) -> None:
    project = inventory["project_a"]
    old_secret = project.webhook_secret
    alice = client_for(users["alice"])
    for name in ("alice", "victor"):
        detail = client_for(users[name]).get(f"/api/v1/projects/{project.pk}/")
        assert detail.json()["webhook_url"] == f"http://testserver/hooks/git/{project.webhook_id}/"
        assert "webhook_secret" not in detail.json()
        assert old_secret not in detail.content.decode()
    assert "webhook_url" not in client_for(users["carol"]).get(f"/api/v1/projects/{project.pk}/").json()
    url = f"/api/v1/projects/{project.pk}/webhook-secret/"
    for name in ("victor", "carol", "bob"):
        assert client_for(users[name]).post(url).status_code == 404
    response = alice.post(url)
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    secret = response.json()["webhook_secret"]
    assert len(secret) >= 32 and secret != old_secret
    assert response.json()["webhook_url"].endswith(f"/hooks/git/{project.webhook_id}/")
    project.refresh_from_db()
    assert project.webhook_secret == secret
    with connection.cursor() as cursor:
        cursor.execute("SELECT webhook_secret FROM inventory_project WHERE id = %s", [project.pk])
        (stored,) = cursor.fetchone()
    assert stored.startswith("gAAAA") and secret not in stored
    for listing in (f"/api/v1/projects/{project.pk}/", "/api/v1/projects/", "/api/v1/environments/"):
        assert secret not in alice.get(listing).content.decode()
    event = AuditEvent.objects.get(action="project.webhook_secret_rotated")
    assert secret not in str(event.detail)


def test_it_documents_the_deployment_endpoints_without_the_webhook_secret(users: Any) -> None:
    schema = client_for(users["alice"]).get("/api/v1/schema/?format=json").json()
    for path in (
        "/api/v1/environments/{id}/deploy/",
        "/api/v1/environments/{id}/promote/",
        "/api/v1/deployments/",
        "/api/v1/deployments/{id}/",
        "/api/v1/deployments/{id}/rollback/",
        "/api/v1/deployments/{id}/compare/",
        "/api/v1/projects/{id}/webhook-secret/",
    ):
        assert path in schema["paths"], path
    components = schema["components"]["schemas"]
    assert set(components["Environment"]["properties"]) >= {"auto_deploy", "state", "current_deployment"}
    for name, component in components.items():
        if name != "WebhookSecret":
            assert "webhook_secret" not in component.get("properties", {}), name


def test_it_never_returns_secret_values_in_deployment_answers(users: Any, inventory: Any, history: Any) -> None:
    env = inventory["env_a"]
    env.set_secrets({"PGPASSWORD": "pg-value-that-must-not-leak"})
    env.save()
    started = client_for(users["alice"]).post(f"/api/v1/environments/{env.pk}/deploy/")
    assert started.status_code == 202
    texts = [started.content.decode()]
    for name in ("alice", "victor", "carol", "bob"):
        client = client_for(users[name])
        for url in (
            "/api/v1/deployments/",
            f"/api/v1/deployments/{history['second'].pk}/",
            f"/api/v1/deployments/{history['second'].pk}/compare/?with={history['first'].pk}",
            f"/api/v1/environments/{env.pk}/",
            f"/api/v1/projects/{env.project_id}/",
        ):
            texts.append(client.get(url).content.decode())
    for text in texts:
        assert "pg-value-that-must-not-leak" not in text
        assert env.project.webhook_secret not in text
