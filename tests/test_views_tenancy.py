"""HTML views answer 404 for other tenants' objects and for actions the role does not allow."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from panel.accounts.models import Membership, Organization
from panel.inventory.models import Environment, Project, Server
from panel.jobs.choices import JobKind, JobStatus
from panel.jobs.models import Job, JobLogLine

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def jobs(inventory: dict[str, Any], orgs: dict[str, Any]) -> dict[str, Job]:
    """A finished validation job with log lines on A's server, one on A1's environment, and one on B's server."""
    job_a = Job.objects.create(
        kind=JobKind.VALIDATE_SERVER,
        organization=orgs["a"],
        server=inventory["server_a"],
        status=JobStatus.SUCCEEDED,
        last_seq=2,
    )
    JobLogLine.objects.create(job=job_a, seq=1, text="Connecting to deploy@127.0.0.99:22")
    JobLogLine.objects.create(job=job_a, seq=2, text="Docker engine 27.0.1")
    job_env = Job.objects.create(
        kind=JobKind.DEPLOY, organization=orgs["a1"], environment=inventory["env_a"], status=JobStatus.SUCCEEDED
    )
    job_b = Job.objects.create(
        kind=JobKind.VALIDATE_SERVER, organization=orgs["b"], server=inventory["server_b"], status=JobStatus.FAILED
    )
    return {"a": job_a, "env_a": job_env, "b": job_b}


def a_urls(inventory: dict[str, Any], jobs: dict[str, Job]) -> dict[str, list[tuple[str, str]]]:
    """(method, url) of every page about objects of organizations A / A1."""
    server, project, environment, job = inventory["server_a"], inventory["project_a"], inventory["env_a"], jobs["a"]
    read = [
        ("get", reverse("server_detail", args=[server.pk])),
        ("get", reverse("server_facts", args=[server.pk])),
        ("get", reverse("job_detail", args=[job.pk])),
        ("get", reverse("api:job-lines", args=[job.pk])),
        ("get", reverse("job_log_download", args=[job.pk])),
    ]
    read_status = [
        ("get", reverse("project_detail", args=[project.pk])),
        ("get", reverse("environment_detail", args=[environment.pk])),
    ]
    change = [
        ("get", reverse("server_edit", args=[server.pk])),
        ("post", reverse("server_edit", args=[server.pk])),
        ("get", reverse("server_delete", args=[server.pk])),
        ("post", reverse("server_delete", args=[server.pk])),
        ("get", reverse("server_confirm", args=[server.pk])),
        ("post", reverse("server_confirm", args=[server.pk])),
        ("post", reverse("server_validate", args=[server.pk])),
        ("post", reverse("server_refetch_host_key", args=[server.pk])),
        ("get", reverse("project_edit", args=[project.pk])),
        ("post", reverse("project_edit", args=[project.pk])),
        ("get", reverse("project_delete", args=[project.pk])),
        ("post", reverse("project_delete", args=[project.pk])),
        ("get", reverse("environment_create", args=[project.pk])),
        ("post", reverse("environment_create", args=[project.pk])),
        ("get", reverse("environment_edit", args=[environment.pk])),
        ("post", reverse("environment_edit", args=[environment.pk])),
        ("get", reverse("environment_delete", args=[environment.pk])),
        ("post", reverse("environment_delete", args=[environment.pk])),
    ]
    return {"read": read, "read_status": read_status, "change": change}


def assert_all_404(client: Client, urls: list[tuple[str, str]]) -> None:
    for method, url in urls:
        response = getattr(client, method)(url)
        assert response.status_code == 404, f"{method.upper()} {url} answered {response.status_code}"


def assert_nothing_changed(inventory: dict[str, Any]) -> None:
    assert Server.objects.filter(pk=inventory["server_a"].pk, name="alpha-1").exists()
    assert Project.objects.filter(pk=inventory["project_a"].pk, name="Shop").exists()
    assert Environment.objects.filter(pk=inventory["env_a"].pk).exists()
    assert not Job.objects.filter(server=inventory["server_a"], status=JobStatus.QUEUED).exists()


def test_it_hides_every_page_of_another_organization(users: Any, inventory: Any, jobs: Any) -> None:
    client = client_for(users["bob"])
    urls = a_urls(inventory, jobs)
    assert_all_404(client, urls["read"] + urls["read_status"] + urls["change"])
    assert_nothing_changed(inventory)


def test_it_shows_bob_his_own_objects(users: Any, inventory: Any, jobs: Any) -> None:
    client = client_for(users["bob"])
    assert client.get(reverse("server_detail", args=[inventory["server_b"].pk])).status_code == 200
    assert client.get(reverse("job_detail", args=[jobs["b"].pk])).status_code == 200
    assert client.get(reverse("project_detail", args=[inventory["project_b"].pk])).status_code == 200


def test_it_lists_only_own_organization(users: Any, inventory: Any, jobs: Any) -> None:
    client = client_for(users["bob"])
    servers = client.get(reverse("server_list")).content.decode()
    assert "bravo-1" in servers
    assert "alpha-1" not in servers
    projects = client.get(reverse("project_list")).content.decode()
    assert "Erp" in projects
    assert "Shop" not in projects
    job_list = client.get(reverse("job_list")).content.decode()
    assert f"#{jobs['b'].pk}" in job_list
    assert f"#{jobs['a'].pk}<" not in job_list


def test_it_refuses_a_customer_every_change_and_every_server(users: Any, inventory: Any, jobs: Any) -> None:
    client = client_for(users["carol"])
    urls = a_urls(inventory, jobs)
    assert_all_404(client, urls["read"] + urls["change"])
    assert_all_404(
        client,
        [
            ("get", reverse("server_create")),
            ("post", reverse("server_create")),
            ("get", reverse("project_create")),
            ("post", reverse("project_create")),
        ],
    )
    assert_nothing_changed(inventory)


def test_it_shows_a_customer_only_the_status_of_her_project(users: Any, inventory: Any, jobs: Any) -> None:
    environment = inventory["env_a"]
    Environment.objects.filter(pk=environment.pk).update(
        domain="shop.example.com", env_vars={"PGDATABASE": "shopdb_visible_to_staff"}
    )
    client = client_for(users["carol"])
    for url in (
        reverse("project_detail", args=[inventory["project_a"].pk]),
        reverse("environment_detail", args=[environment.pk]),
        reverse("project_list"),
    ):
        response = client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        assert "127.0.0.99" not in html
        assert "alpha-1" not in html
        assert "prod.yaml" not in html
        assert "shop-16-0-prod" not in html
        assert "shopdb_visible_to_staff" not in html
        assert "/srv/git/x.git" not in html
        assert "ssh-ed25519" not in html
    html = client.get(reverse("environment_detail", args=[environment.pk])).content.decode()
    assert "shop.example.com" in html
    assert "Production" in html
    assert "Deploy: succeeded" in html


def test_it_sends_a_customer_home_to_projects_and_staff_to_the_dashboard(users: Any) -> None:
    assert client_for(users["carol"]).get("/").url == reverse("project_list")
    assert client_for(users["victor"]).get("/").url == reverse("dashboard")


def test_it_lets_a_viewer_see_but_not_change(users: Any, inventory: Any, jobs: Any) -> None:
    client = client_for(users["victor"])
    urls = a_urls(inventory, jobs)
    for method, url in urls["read"] + urls["read_status"]:
        assert getattr(client, method)(url).status_code == 200, url
    assert_all_404(client, urls["change"])
    assert_all_404(client, [("get", reverse("server_create")), ("post", reverse("project_create"))])
    detail = client.get(reverse("server_detail", args=[inventory["server_a"].pk])).content.decode()
    assert "127.0.0.99" in detail
    assert reverse("server_validate", args=[inventory["server_a"].pk]) not in detail
    assert_nothing_changed(inventory)


def test_it_lets_an_operator_change(users: Any, inventory: Any, jobs: Any) -> None:
    client = client_for(users["olga"])
    server = inventory["server_a"]
    response = client.post(
        reverse("server_edit", args=[server.pk]),
        {"name": "alpha-one", "port": 2222, "username": "deploy", "labels_text": "eu, ssd"},
    )
    assert response.status_code == 302
    server.refresh_from_db()
    assert (server.name, server.port, server.labels) == ("alpha-one", 2222, ["eu", "ssd"])


def test_it_refuses_state_changes_by_get(users: Any, inventory: Any) -> None:
    client = client_for(users["alice"])
    server = inventory["server_a"]
    assert client.get(reverse("server_validate", args=[server.pk])).status_code == 405
    assert client.get(reverse("server_refetch_host_key", args=[server.pk])).status_code == 405
    assert client.get(reverse("logout")).status_code == 405
    assert not Job.objects.filter(server=server).exists()


def test_it_requires_the_csrf_token(users: Any, inventory: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["alice"])
    server = inventory["server_a"]
    response = client.post(reverse("server_delete", args=[server.pk]))
    assert response.status_code == 403
    assert Server.objects.filter(pk=server.pk).exists()


def test_it_switches_only_to_an_organization_of_the_user(users: Any, orgs: Any) -> None:
    from panel.accounts.context import SESSION_KEY

    client = client_for(users["alice"])
    assert client.post(reverse("switch_organization"), {"organization": orgs["b"].pk}).status_code == 404
    assert SESSION_KEY not in client.session
    assert client.post(reverse("switch_organization"), {"organization": orgs["a1"].pk}).status_code == 302
    assert client.session[SESSION_KEY] == orgs["a1"].pk


def test_it_redirects_anonymous_users_to_login(inventory: Any) -> None:
    response = Client().get(reverse("server_detail", args=[inventory["server_a"].pk]))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_shows_the_audit_log_only_to_owners_of_their_organizations(users: Any, orgs: Any) -> None:
    from panel.accounts.services import record

    record(action="test.event_a", organization=orgs["a"], actor_name="someone")
    record(action="test.event_b", organization=orgs["b"], actor_name="someone")
    record(action="test.event_global", actor_name="someone")
    html = client_for(users["alice"]).get(reverse("audit_log")).content.decode()
    assert "test.event_a" in html
    assert "test.event_b" not in html
    assert "test.event_global" not in html
    assert client_for(users["olga"]).get(reverse("audit_log")).status_code == 404
    assert client_for(users["carol"]).get(reverse("audit_log")).status_code == 404
    root = users["alice"].__class__.objects.create_superuser(username="root", password="x" * 20)
    Membership.objects.create(user=root, organization=Organization.objects.get(slug="alpha"), role="owner")
    html = client_for(root).get(reverse("audit_log")).content.decode()
    assert "test.event_global" in html
    assert "test.event_b" not in html


def test_it_revokes_only_own_tokens(users: Any) -> None:
    from panel.accounts.services import create_token

    token, _ = create_token(user=users["bob"], name="bobs")
    client = client_for(users["alice"])
    assert client.post(reverse("revoke_api_token", args=[token.pk])).status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert "bobs" not in client.get(reverse("api_tokens")).content.decode()
