"""Git push webhooks: only a request signed with the project's secret runs anything, and only on environments
mapped to the pushed branch with auto-deploy on. A valid GitHub push deploys the lab's sample project for real.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.test import Client

from deployments.models import Deployment
from panel.accounts.models import AuditEvent
from panel.inventory.models import Environment, Project
from panel.jobs.models import Job
from tests.deploy_fixtures import health, log_text
from tests.lab_helpers import wait_job

SHA = "0123456789abcdef0123456789abcdef01234567"
ZERO = "0" * 40


SIGNED = b'{"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567"}'
TAMPERED = SIGNED.replace(b"main", b"prod")


def push_payload(branch: str = "main", sha: str = SHA) -> dict[str, Any]:
    return {"ref": f"refs/heads/{branch}", "before": ZERO, "after": sha, "checkout_sha": sha,
            "repository": {"name": "shop"}}  # fmt: skip


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github(
    project: Project, payload: Any, *, event: str = "push", secret: str | None = None, signature: str | None = None,
    body: bytes | None = None,
) -> Any:  # fmt: skip
    """POST a GitHub-style delivery with Django's test client (signed with the project's secret by default)."""
    raw = body if body is not None else json.dumps(payload).encode()
    headers = {"HTTP_X_GITHUB_EVENT": event, "HTTP_X_GITHUB_DELIVERY": "d-1"}
    if signature is None:
        signature = sign(secret if secret is not None else project.webhook_secret, raw)
    if signature:
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature
    return Client().post(f"/hooks/git/{project.webhook_id}/", data=raw, content_type="application/json", **headers)


def gitlab(project: Project, payload: Any, *, token: str | None = None, event: str = "Push Hook") -> Any:
    headers = {"HTTP_X_GITLAB_EVENT": event}
    token = project.webhook_secret if token is None else token
    if token:
        headers["HTTP_X_GITLAB_TOKEN"] = token
    return Client().post(
        f"/hooks/git/{project.webhook_id}/", data=json.dumps(payload), content_type="application/json", **headers
    )


def security_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(is_security=True, action="webhook.rejected"))


@pytest.fixture
def auto_env(inventory: dict[str, Any]) -> Environment:
    """A1's environment on branch main with auto-deploy on: a valid push to main deploys it."""
    environment: Environment = inventory["env_a"]
    environment.auto_deploy = True
    environment.save()
    return environment


@pytest.mark.django_db
@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda p: github(p, push_payload(), signature="sha256=" + "0" * 64), id="bad-signature"),
        pytest.param(lambda p: github(p, push_payload(), secret="not-the-secret"), id="other-secret"),
        pytest.param(lambda p: github(p, push_payload(), signature=""), id="missing-signature"),
        pytest.param(lambda p: github(p, push_payload(), signature="sha1=abc"), id="malformed-signature"),
        pytest.param(lambda p: github(p, None, body=TAMPERED, signature=sign(p.webhook_secret, SIGNED)), id="tampered"),
        pytest.param(lambda p: gitlab(p, push_payload(), token="wrong-token"), id="gitlab-wrong-token"),
        pytest.param(lambda p: gitlab(p, push_payload(), token=""), id="gitlab-missing-token"),
        pytest.param(lambda p: github(p, {"zen": "x"}, event="ping", signature="sha256=00"), id="unsigned-ping"),
    ],
)
def test_it_refuses_unsigned_or_badly_signed_requests(auto_env: Environment, send: Any) -> None:
    project = auto_env.project
    response = send(project)
    assert response.status_code == 403, response.content
    assert project.webhook_secret not in response.content.decode()
    assert not Job.objects.exists()
    events = security_events()
    assert len(events) == 1
    assert events[0].organization_id == project.organization_id
    assert events[0].object_id == str(project.pk)
    assert project.webhook_secret not in json.dumps(events[0].detail)


@pytest.mark.django_db
def test_it_answers_404_for_unknown_webhooks(auto_env: Environment) -> None:
    for webhook_id in ("0" * 32, "nothex", auto_env.project.webhook_id.upper(), "x" * 200):
        response = Client().post(f"/hooks/git/{webhook_id}/", data="{}", content_type="application/json")
        assert response.status_code == 404, webhook_id
    assert Client().get(f"/hooks/git/{auto_env.project.webhook_id}/").status_code == 405
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_it_deploys_a_valid_github_push_to_mapped_environments_only(inventory: Any, auto_env: Environment) -> None:
    project = auto_env.project
    other_branch = Environment.objects.create(
        project=project, server=auto_env.server, name="staging", kind="staging", compose_files=["test.yaml"],
        compose_project="shop-16-0-staging", git_ref="develop", auto_deploy=True,
    )  # fmt: skip
    manual = Environment.objects.create(
        project=project, server=auto_env.server, name="manual", kind="production", compose_files=["prod.yaml"],
        compose_project="shop-16-0-manual", git_ref="main",
    )  # fmt: skip
    response = github(project, push_payload())
    assert response.status_code == 202, response.content
    body = response.json()
    deployment = Deployment.objects.get()
    assert body["started"] == [{"environment": auto_env.pk, "name": "prod", "deployment": deployment.pk,
                                "job": deployment.job_id}]  # fmt: skip
    skipped = {item["environment"]: item["reason"] for item in body["skipped"]}
    assert skipped == {other_branch.pk: "tracks develop, not main", manual.pk: "auto-deploy is off"}
    assert deployment.environment == auto_env
    assert deployment.ref == SHA
    assert deployment.trigger == "webhook"
    assert deployment.triggered_by is None
    assert deployment.job.trigger == "webhook"
    assert deployment.job.created_by is None
    assert not security_events()
    assert AuditEvent.objects.filter(action="webhook.push", object_id=str(project.pk)).exists()
    # The same push again, while that job is queued: skipped as busy, naming the job.
    again = github(project, push_payload())
    assert again.status_code == 200, again.content
    assert {"environment": auto_env.pk, "name": "prod", "reason": "busy", "job": deployment.job_id} in (
        again.json()["skipped"]
    )
    assert Job.objects.count() == 1
    # The other branch deploys the other environment.
    develop = github(project, push_payload("develop"))
    assert develop.status_code == 202
    assert Deployment.objects.get(environment=other_branch).ref == SHA


@pytest.mark.django_db
def test_it_starts_nothing_when_no_environment_wants_the_push(inventory: Any) -> None:
    project = inventory["project_a"]
    # Auto-deploy is off by default.
    response = github(project, push_payload())
    assert response.status_code == 200, response.content
    assert response.json()["started"] == []
    assert response.json()["skipped"] == [{"environment": inventory["env_a"].pk, "name": "prod",
                                           "reason": "auto-deploy is off"}]  # fmt: skip
    Environment.objects.filter(pk=inventory["env_a"].pk).update(auto_deploy=True)
    response = github(project, push_payload("feature/x"))
    assert response.status_code == 200
    assert response.json()["skipped"][0]["reason"] == "tracks main, not feature/x"
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_it_deploys_a_valid_gitlab_push(auto_env: Environment) -> None:
    payload = {**push_payload(), "after": "f" * 40, "object_kind": "push"}
    response = gitlab(auto_env.project, payload)
    assert response.status_code == 202, response.content
    deployment = Deployment.objects.get()
    assert deployment.ref == SHA  # checkout_sha, GitLab's field
    assert deployment.trigger == "webhook"
    assert Job.objects.get().status == "queued"


@pytest.mark.django_db
def test_it_uses_the_rotated_secret(users: Any, auto_env: Environment) -> None:
    from rest_framework.test import APIClient

    project = auto_env.project
    old = project.webhook_secret
    client = APIClient()
    client.force_authenticate(users["alice"])
    new = client.post(f"/api/v1/projects/{project.pk}/webhook-secret/").json()["webhook_secret"]
    assert github(project, push_payload(), secret=old).status_code == 403
    assert gitlab(project, push_payload(), token=old).status_code == 403
    assert not Job.objects.exists()
    assert github(project, push_payload(), secret=new).status_code == 202


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("event", "payload", "expected"),
    [
        ("ping", {"zen": "Keep it logically awesome."}, "pong"),
        ("push", {"ref": "refs/tags/v1.0", "after": SHA}, "Ignored: not a branch push"),
        ("push", {"ref": "refs/heads/main", "after": ZERO, "deleted": True}, "Ignored: branch deleted"),
        ("issues", {"action": "opened"}, "Ignored: only push events"),
    ],
)
def test_it_acknowledges_and_ignores_other_events(
    auto_env: Environment, event: str, payload: Any, expected: str
) -> None:
    response = github(auto_env.project, payload, event=event)
    assert response.status_code == 200, response.content
    assert response.json()["detail"].startswith(expected)
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "payload",
    [
        push_payload("$(touch /tmp/pwned)"),
        push_payload("-oProxyCommand=x"),
        push_payload("main;id"),
        push_payload("a..b"),
        push_payload("main\nid"),
        push_payload("main", sha="--upload-pack=x"),
        push_payload("main", sha="$(id)"),
        {"ref": ["refs/heads/main"], "after": SHA},
    ],
)
def test_it_refuses_malicious_branch_names_and_commits(auto_env: Environment, payload: Any) -> None:
    response = github(auto_env.project, payload)
    assert response.status_code in (200, 400), response.content
    assert response.status_code == 400 or response.json()["detail"].startswith("Ignored")
    assert not Job.objects.exists()
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_it_refuses_large_bodies_and_non_json(auto_env: Environment) -> None:
    big = json.dumps({**push_payload(), "padding": "x" * (1024 * 1024)}).encode()
    response = github(auto_env.project, None, body=big)
    assert response.status_code == 413, response.content
    not_json = github(auto_env.project, None, body=b"ref=refs/heads/main")
    assert not_json.status_code == 400
    assert not Job.objects.exists()


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.django_db(transaction=True)
def test_it_takes_webhooks_without_session_or_csrf_token(live_server_url: str, inventory: Any) -> None:
    project = inventory["project_a"]
    url = f"{live_server_url}/hooks/git/{project.webhook_id}/"
    body = b'{"zen": "Design for failure."}'
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "ping"}
    assert http_post(url, body, {**headers, "X-Hub-Signature-256": sign(project.webhook_secret, body)}) == (
        200,
        {"detail": "pong"},
    )
    code, _ = http_post(url, body, {**headers, "X-Hub-Signature-256": sign("guess", body)})
    assert code == 403
    rejected = AuditEvent.objects.get(action="webhook.rejected")
    assert rejected.is_security and rejected.ip == "127.0.0.1"


@pytest.mark.lab
@pytest.mark.django_db(transaction=True)
def test_it_deploys_the_sample_project_on_a_signed_github_push(
    deploy_env: Environment, lab1: Any, lab_sample: Any, live_server_url: str
) -> None:
    deploy_env.auto_deploy = True
    deploy_env.save()
    project = deploy_env.project
    body = json.dumps(push_payload("main", lab_sample.sample_initial_sha)).encode()
    code, answer = http_post(
        f"{live_server_url}/hooks/git/{project.webhook_id}/",
        body,
        {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": "lab-1",
         "X-Hub-Signature-256": sign(project.webhook_secret, body)},
    )  # fmt: skip
    assert code == 202, answer
    [started] = answer["started"]
    deployment = Deployment.objects.get(pk=started["deployment"])
    job = wait_job(deployment.job, timeout=600)
    deployment.refresh_from_db()
    assert job.status == "succeeded", job.reason + log_text(deployment)[-3000:]
    assert deployment.status == "succeeded"
    assert deployment.trigger == "webhook"
    assert deployment.commit == lab_sample.sample_initial_sha
    assert health(lab1) == {"status": "pass"}
    deploy_env.refresh_from_db()
    assert deploy_env.current_deployment_id == deployment.pk
