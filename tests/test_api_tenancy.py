"""Tenancy of the API: every object is reached through the scoping helper.

The rules tested here (see ``panel.accounts.api.views``):
- another organization's object answers 404, for reads, writes and actions alike, with the same body as an unknown id;
- lists never contain another organization's objects;
- a viewer reads but every write on an object answers 404 (the object does not exist *for changing*), and creating
  in the viewer's own organization answers 403 (the organization is visible, the role does not allow it);
- a customer reads projects, environments and jobs in a reduced form, never servers, and never writes.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from panel.jobs.choices import JobKind, JobStatus
from panel.jobs.models import Job
from panel.jobs.services import append_lines

pytestmark = pytest.mark.django_db

NOT_FOUND = {"detail": "Not found."}


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def jobs(inventory: dict[str, Any]) -> dict[str, Job]:
    """A job of A's server (with log lines), one of A1's environment, and one of B's server."""
    server_a, env_a, server_b = inventory["server_a"], inventory["env_a"], inventory["server_b"]
    ja = Job.objects.create(kind=JobKind.VALIDATE_SERVER, organization=server_a.organization, server=server_a)
    append_lines(ja.pk, [("out", "connecting to 127.0.0.99"), ("err", "line two")])
    jenv = Job.objects.create(kind=JobKind.DEPLOY, organization=env_a.project.organization, environment=env_a)
    append_lines(jenv.pk, [("out", "deploying on 127.0.0.99")])
    jb = Job.objects.create(kind=JobKind.VALIDATE_SERVER, organization=server_b.organization, server=server_b)
    return {"a": ja, "env_a": jenv, "b": jb}


def ids(response: Any) -> set[int]:
    assert response.status_code == 200, response.content
    return {item["id"] for item in response.json()["results"]}


def test_it_answers_404_for_another_orgs_objects(users: Any, inventory: Any, jobs: Any) -> None:
    bob = client_for(users["bob"])
    urls = [
        f"/api/v1/servers/{inventory['server_a'].pk}/",
        f"/api/v1/projects/{inventory['project_a'].pk}/",
        f"/api/v1/environments/{inventory['env_a'].pk}/",
    ]
    for url in urls:
        for method in ("get", "patch", "delete"):
            response = getattr(bob, method)(url, {"name": "stolen"}, format="json")
            assert response.status_code == 404, (method, url, response.content)
            assert response.json() == NOT_FOUND
    actions = [
        ("get", f"/api/v1/jobs/{jobs['a'].pk}/"),
        ("get", f"/api/v1/jobs/{jobs['env_a'].pk}/"),
        ("post", f"/api/v1/servers/{inventory['server_a'].pk}/validate/"),
        ("post", f"/api/v1/servers/{inventory['server_a'].pk}/confirm-host-key/"),
        ("get", f"/api/v1/jobs/{jobs['a'].pk}/lines/"),
        ("post", f"/api/v1/jobs/{jobs['a'].pk}/cancel/"),
    ]
    for method, url in actions:
        response = getattr(bob, method)(url, {"fingerprint": "SHA256:test"}, format="json")
        assert response.status_code == 404, (method, url, response.content)
        assert response.json() == NOT_FOUND
    # The same answer as for an id that does not exist.
    assert bob.get("/api/v1/servers/999999/").json() == NOT_FOUND
    inventory["server_a"].refresh_from_db()
    assert inventory["server_a"].name == "alpha-1"
    assert inventory["server_a"].host_key_confirmed_at is None
    assert Job.objects.get(pk=jobs["a"].pk).status == JobStatus.QUEUED
    assert not Job.objects.filter(server=inventory["server_a"]).exclude(pk=jobs["a"].pk).exists()


def test_it_lists_only_the_callers_objects(users: Any, inventory: Any, jobs: Any) -> None:
    bob, alice = client_for(users["bob"]), client_for(users["alice"])
    assert ids(bob.get("/api/v1/servers/")) == {inventory["server_b"].pk}
    assert ids(bob.get("/api/v1/projects/")) == {inventory["project_b"].pk}
    assert ids(bob.get("/api/v1/environments/")) == {inventory["env_b"].pk}
    assert ids(bob.get("/api/v1/jobs/")) == {jobs["b"].pk}
    assert ids(bob.get(f"/api/v1/jobs/?server={inventory['server_a'].pk}")) == set()
    # A's staff also see the customer organization A1 it manages, never B.
    assert ids(alice.get("/api/v1/servers/")) == {inventory["server_a"].pk}
    assert ids(alice.get("/api/v1/projects/")) == {inventory["project_a"].pk}
    assert ids(alice.get("/api/v1/environments/")) == {inventory["env_a"].pk}
    assert ids(alice.get("/api/v1/jobs/")) == {jobs["a"].pk, jobs["env_a"].pk}
    assert ids(alice.get(f"/api/v1/jobs/?environment={inventory['env_a'].pk}")) == {jobs["env_a"].pk}
    assert ids(bob.get("/api/v1/organizations/")) == {users["bob"].memberships.get().organization_id}


def test_it_filters_jobs_and_refuses_bad_filters(users: Any, inventory: Any, jobs: Any) -> None:
    alice = client_for(users["alice"])
    assert ids(alice.get(f"/api/v1/jobs/?server={inventory['server_a'].pk}")) == {jobs["a"].pk}
    assert ids(alice.get("/api/v1/jobs/?status=running")) == set()
    assert ids(alice.get("/api/v1/jobs/?status=queued")) == {jobs["a"].pk, jobs["env_a"].pk}
    assert alice.get("/api/v1/jobs/?status=bogus").status_code == 400
    assert alice.get("/api/v1/jobs/?server=abc").status_code == 400


def test_it_gives_customers_a_reduced_read_only_view(users: Any, inventory: Any, jobs: Any) -> None:
    carol = client_for(users["carol"])
    projects = carol.get("/api/v1/projects/").json()["results"]
    assert projects == [
        {
            "id": inventory["project_a"].pk,
            "name": "Shop",
            "organization": inventory["project_a"].organization_id,
            "odoo_version": "16.0",
        }
    ]
    environments = carol.get("/api/v1/environments/").json()["results"]
    assert environments == [
        {
            "id": inventory["env_a"].pk,
            "name": "prod",
            "kind": "production",
            "domain": "",
            "project": inventory["project_a"].pk,
            "state": "deploying",  # the jobs fixture queued a deploy job there
            "state_detail": "Deploying.",
            # Monitoring's health, which customers see too (never polled here: unknown, nothing measured).
            "health_state": "unknown",
            "uptime": {"24h": None, "7d": None, "30d": None, "365d": None},
        }
    ]
    job = carol.get(f"/api/v1/jobs/{jobs['env_a'].pk}/").json()
    assert set(job) == {"id", "kind", "status", "created_at", "started_at", "finished_at"}
    assert ids(carol.get("/api/v1/jobs/")) == {jobs["env_a"].pk}
    assert "127.0.0.99" not in carol.get(f"/api/v1/environments/{inventory['env_a'].pk}/").content.decode()
    # No servers, no logs.
    assert ids(carol.get("/api/v1/servers/")) == set()
    assert carol.get(f"/api/v1/servers/{inventory['server_a'].pk}/").status_code == 404
    assert carol.get(f"/api/v1/jobs/{jobs['env_a'].pk}/lines/").status_code == 404


def test_it_refuses_every_write_of_a_customer(users: Any, inventory: Any, jobs: Any) -> None:
    carol = client_for(users["carol"])
    project, env, a1 = inventory["project_a"], inventory["env_a"], inventory["project_a"].organization
    for method, url in [
        ("patch", f"/api/v1/projects/{project.pk}/"),
        ("delete", f"/api/v1/projects/{project.pk}/"),
        ("patch", f"/api/v1/environments/{env.pk}/"),
        ("delete", f"/api/v1/environments/{env.pk}/"),
        ("post", f"/api/v1/jobs/{jobs['env_a'].pk}/cancel/"),
        ("post", f"/api/v1/servers/{inventory['server_a'].pk}/validate/"),
    ]:
        response = getattr(carol, method)(url, {"name": "renamed"}, format="json")
        assert response.status_code == 404, (method, url, response.content)
    created = carol.post(
        "/api/v1/projects/", {"organization": a1.pk, "name": "Mine", "slug": "mine", "git_url": "/srv/git/m.git"}
    )
    assert created.status_code == 403, created.content
    created = carol.post("/api/v1/servers/", {"organization": a1.pk, "name": "s", "host": "h", "username": "u"})
    assert created.status_code == 403, created.content
    created = carol.post(
        "/api/v1/environments/", {"project": project.pk, "server": inventory["server_a"].pk, "name": "staging"}
    )
    assert created.status_code in (400, 403), created.content
    project.refresh_from_db()
    assert project.name == "Shop"
    assert project.__class__.objects.filter(organization=a1).count() == 1
    assert env.__class__.objects.filter(pk=env.pk).exists()
    assert Job.objects.get(pk=jobs["env_a"].pk).status == JobStatus.QUEUED


def test_it_lets_a_viewer_read_but_not_write(users: Any, inventory: Any, jobs: Any) -> None:
    victor = client_for(users["victor"])
    server = inventory["server_a"]
    detail = victor.get(f"/api/v1/servers/{server.pk}/")
    assert detail.status_code == 200
    assert detail.json()["host"] == "127.0.0.99"
    assert victor.get(f"/api/v1/jobs/{jobs['a'].pk}/lines/").status_code == 200
    for method, url in [
        ("patch", f"/api/v1/servers/{server.pk}/"),
        ("delete", f"/api/v1/servers/{server.pk}/"),
        ("post", f"/api/v1/servers/{server.pk}/validate/"),
        ("patch", f"/api/v1/projects/{inventory['project_a'].pk}/"),
        ("post", f"/api/v1/jobs/{jobs['a'].pk}/cancel/"),
    ]:
        response = getattr(victor, method)(url, {"name": "renamed"}, format="json")
        assert response.status_code == 404, (method, url, response.content)
    created = victor.post(
        "/api/v1/servers/", {"organization": server.organization_id, "name": "new", "host": "h", "username": "u"}
    )
    assert created.status_code == 403, created.content
    server.refresh_from_db()
    assert server.name == "alpha-1"


def test_it_refuses_to_create_in_an_invisible_org_like_an_unknown_id(users: Any, orgs: Any) -> None:
    bob = client_for(users["bob"])
    for org_id in (orgs["a"].pk, 999999):
        response = bob.post(
            "/api/v1/projects/",
            {"organization": org_id, "name": "Evil", "slug": "evil", "git_url": "/srv/git/e.git"},
            format="json",
        )
        assert response.status_code == 400
        assert "organization" in response.json()
        assert "does not exist" in response.json()["organization"][0]


def test_it_refuses_a_server_of_another_org_for_an_environment(users: Any, inventory: Any) -> None:
    bob = client_for(users["bob"])
    response = bob.post(
        "/api/v1/environments/",
        {"project": inventory["project_b"].pk, "server": inventory["server_a"].pk, "name": "staging"},
        format="json",
    )
    assert response.status_code == 400
    assert "server" in response.json()


def test_it_lets_an_operator_change_and_records_it(users: Any, inventory: Any) -> None:
    from panel.accounts.models import AuditEvent

    olga = client_for(users["olga"])
    response = olga.patch(f"/api/v1/projects/{inventory['project_a'].pk}/", {"name": "Shop 2"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Shop 2"
    assert AuditEvent.objects.filter(action="project.updated", actor=users["olga"]).exists()
