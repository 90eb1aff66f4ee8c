"""Input validation: every identifier that may reach a remote shell is refused with a field message, nothing is
created, and for servers nothing is contacted (validation runs before ``fetch_host_key``)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from panel.inventory.models import Environment, Project, Server
from panel.remote.ssh import HostKey

pytestmark = pytest.mark.django_db

INJECTIONS = [
    "x;id",
    "x$(id)",
    "x`id`",
    "x|id",
    "x&&id",
    "-oProxyCommand=id",
    "--upload-pack=id",
    "x\nid",
    "x\x00id",
    "x" * 301,
]


@pytest.fixture
def alice(users: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(users["alice"])
    return client


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (and fake) every host key read; a test asserts it stayed empty."""
    calls: list[tuple[str, int]] = []

    def fake_fetch(host: str, port: int) -> HostKey:
        calls.append((host, port))
        return HostKey(key_type="ssh-ed25519", base64="AAAAC3NzaC1lZDI1NTE5AAAAIBXz", fingerprint="SHA256:fake")

    monkeypatch.setattr("panel.inventory.services.fetch_host_key", fake_fetch)
    return calls


def server_body(orgs: Any, **override: Any) -> dict[str, Any]:
    return {"organization": orgs["a"].pk, "name": "web-1", "host": "web1.example.com", "username": "deploy"} | override


def assert_refused(response: Any, field: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert body[field] and all(isinstance(message, str) and message for message in body[field]), body


@pytest.mark.parametrize("field", ["name", "host", "username"])
@pytest.mark.parametrize("payload", INJECTIONS)
def test_it_refuses_server_fields_before_connecting(
    alice: APIClient, orgs: Any, inventory: Any, no_connection: list[Any], field: str, payload: str
) -> None:
    before = Server.objects.count()
    response = alice.post("/api/v1/servers/", server_body(orgs, **{field: payload}), format="json")
    assert_refused(response, field)
    assert no_connection == []
    assert Server.objects.count() == before


@pytest.mark.parametrize("port", [0, 65536, -1, "22;id"])
def test_it_refuses_bad_ports(alice: APIClient, orgs: Any, no_connection: list[Any], port: Any) -> None:
    response = alice.post("/api/v1/servers/", server_body(orgs, port=port), format="json")
    assert_refused(response, "port")
    assert no_connection == []
    assert not Server.objects.filter(name="web-1").exists()


def test_it_refuses_a_duplicate_server_name_before_connecting(
    alice: APIClient, orgs: Any, inventory: Any, no_connection: list[Any]
) -> None:
    response = alice.post("/api/v1/servers/", server_body(orgs, name="alpha-1"), format="json")
    assert response.status_code == 400, response.content
    assert no_connection == []


def test_it_refuses_a_bad_private_key_and_labels(alice: APIClient, orgs: Any, no_connection: list[Any]) -> None:
    response = alice.post("/api/v1/servers/", server_body(orgs, private_key="not a key; rm -rf /"), format="json")
    assert_refused(response, "private_key")
    assert "rm -rf" not in response.content.decode()
    response = alice.post("/api/v1/servers/", server_body(orgs, labels=["ok", "$(id)"]), format="json")
    assert_refused(response, "labels")
    assert no_connection == []
    assert not Server.objects.filter(name="web-1").exists()


def test_it_creates_a_valid_server(alice: APIClient, orgs: Any, no_connection: list[Any]) -> None:
    response = alice.post("/api/v1/servers/", server_body(orgs, port=2222, labels=["prod"]), format="json")
    assert response.status_code == 201, response.content
    assert no_connection == [("web1.example.com", 2222)]
    body = response.json()
    assert body["status"] == "unconfirmed"
    assert body["host_key_fingerprint"] == "SHA256:fake"
    assert body["public_key"].startswith("ssh-ed25519 ")
    assert "private_key" not in body


def test_it_reports_an_unreachable_host_as_400(alice: APIClient, orgs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from panel.remote import Unreachable

    def unreachable(host: str, port: int) -> HostKey:
        raise Unreachable(f"{host}:{port} refused the connection: is sshd running and is the port right?")

    monkeypatch.setattr("panel.inventory.services.fetch_host_key", unreachable)
    response = alice.post("/api/v1/servers/", server_body(orgs), format="json")
    assert response.status_code == 400
    assert "refused the connection" in response.json()["detail"]
    assert not Server.objects.filter(name="web-1").exists()


def project_body(orgs: Any, **override: Any) -> dict[str, Any]:
    return {
        "organization": orgs["a1"].pk,
        "name": "Shop Two",
        "slug": "shop2",
        "git_url": "git@github.com:acme/shop.git",
        "default_branch": "16.0",
    } | override


@pytest.mark.parametrize("field", ["name", "slug", "git_url", "default_branch"])
@pytest.mark.parametrize("payload", INJECTIONS)
def test_it_refuses_project_fields(alice: APIClient, orgs: Any, field: str, payload: str) -> None:
    response = alice.post("/api/v1/projects/", project_body(orgs, **{field: payload}), format="json")
    assert_refused(response, field)
    assert not Project.objects.filter(slug="shop2").exists()


@pytest.mark.parametrize(
    "url", ["ext::sh -c id", "file:///etc/passwd", "ssh://host/../../etc", "https://x/y;id", "git@h:$(id)"]
)
def test_it_refuses_dangerous_git_urls(alice: APIClient, orgs: Any, url: str) -> None:
    assert_refused(alice.post("/api/v1/projects/", project_body(orgs, git_url=url), format="json"), "git_url")


def test_it_creates_a_valid_project_with_a_generated_deploy_key(alice: APIClient, orgs: Any) -> None:
    response = alice.post("/api/v1/projects/", project_body(orgs), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["deploy_public_key"].startswith("ssh-ed25519 ")
    assert "deploy_key" not in response.json()


def env_body(inventory: Any, **override: Any) -> dict[str, Any]:
    return {
        "project": inventory["project_a"].pk,
        "server": inventory["server_a"].pk,
        "name": "staging",
        "kind": "staging",
        "git_ref": "16.0",
        "compose_files": ["test.yaml"],
        "domain": "staging.example.com",
    } | override


@pytest.mark.parametrize("field", ["name", "compose_project", "git_ref", "domain"])
@pytest.mark.parametrize("payload", INJECTIONS)
def test_it_refuses_environment_fields(alice: APIClient, inventory: Any, field: str, payload: str) -> None:
    response = alice.post("/api/v1/environments/", env_body(inventory, **{field: payload}), format="json")
    assert_refused(response, field)
    assert not Environment.objects.filter(name="staging").exists()


@pytest.mark.parametrize("payload", INJECTIONS)
def test_it_refuses_compose_files(alice: APIClient, inventory: Any, payload: str) -> None:
    response = alice.post("/api/v1/environments/", env_body(inventory, compose_files=[payload]), format="json")
    assert_refused(response, "compose_files")
    for bad in ([], ["../prod.yaml"], ["prod.yaml"] * 11, "prod.yaml"):
        response = alice.post("/api/v1/environments/", env_body(inventory, compose_files=bad), format="json")
        assert_refused(response, "compose_files")
    assert not Environment.objects.filter(name="staging").exists()


@pytest.mark.parametrize("field", ["env_vars", "secrets"])
@pytest.mark.parametrize("payload", INJECTIONS)
def test_it_refuses_env_var_names(alice: APIClient, inventory: Any, field: str, payload: str) -> None:
    response = alice.post("/api/v1/environments/", env_body(inventory, **{field: {payload: "v"}}), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Environment.objects.filter(name="staging").exists()


@pytest.mark.parametrize("field", ["env_vars", "secrets"])
@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "x" * 4097, ["list"], {"nested": "x"}])
def test_it_refuses_env_var_values(alice: APIClient, inventory: Any, field: str, value: Any) -> None:
    response = alice.post("/api/v1/environments/", env_body(inventory, **{field: {"NAME": value}}), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Environment.objects.filter(name="staging").exists()


def test_it_keeps_shell_characters_in_values_as_plain_data(alice: APIClient, inventory: Any) -> None:
    """Values are data (passwords contain ``$`` and ``;``): accepted verbatim, never interpreted."""
    values = {"PGPASSWORD": "p$(id);`x`|y&&z", "OTHER": "-oProxyCommand=x"}
    response = alice.post("/api/v1/environments/", env_body(inventory, env_vars=values), format="json")
    assert response.status_code == 201, response.content
    assert Environment.objects.get(name="staging").env_vars == values


@pytest.mark.parametrize(
    ("field", "value"), [("workers", 65), ("workers", -1), ("memory_limit", "4g;id"), ("cpu_limit", "$(id)")]
)
def test_it_refuses_limits(alice: APIClient, inventory: Any, field: str, value: Any) -> None:
    assert_refused(alice.post("/api/v1/environments/", env_body(inventory, **{field: value}), format="json"), field)


def test_it_validates_updates_too(alice: APIClient, inventory: Any) -> None:
    env = inventory["env_a"]
    response = alice.patch(f"/api/v1/environments/{env.pk}/", {"git_ref": "--upload-pack=id"}, format="json")
    assert_refused(response, "git_ref")
    response = alice.patch(f"/api/v1/servers/{inventory['server_a'].pk}/", {"username": "-oX"}, format="json")
    assert_refused(response, "username")
    env.refresh_from_db()
    assert env.git_ref == "main"
    # Fixed once created: host and port belong to the pinned host key.
    response = alice.patch(f"/api/v1/servers/{inventory['server_a'].pk}/", {"host": "evil.example"}, format="json")
    assert response.status_code == 400
    inventory["server_a"].refresh_from_db()
    assert inventory["server_a"].host == "127.0.0.99"


def test_it_refuses_duplicates_with_400(alice: APIClient, inventory: Any) -> None:
    env = inventory["env_a"]
    response = alice.post("/api/v1/environments/", env_body(inventory, name="prod"), format="json")
    assert response.status_code == 400, response.content
    response = alice.post(
        "/api/v1/environments/", env_body(inventory, compose_project=env.compose_project), format="json"
    )
    assert response.status_code == 400, response.content
    assert Environment.objects.filter(project=env.project).count() == 1
    other, _ = Server.objects.get_or_create(
        organization=inventory["server_a"].organization,
        name="alpha-2",
        defaults={"host": "127.0.0.98", "username": "deploy"},
    )
    response = alice.patch(f"/api/v1/servers/{other.pk}/", {"name": "alpha-1"}, format="json")
    assert response.status_code == 400, response.content
    other.refresh_from_db()
    assert other.name == "alpha-2"


def test_it_refuses_changes_to_fields_fixed_at_creation(users, inventory) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(users["alice"])
    server = inventory["server_a"]
    response = client.patch(f"/api/v1/servers/{server.pk}/", {"host": "127.0.0.98"}, format="json")
    assert response.status_code == 400
    assert "cannot be changed after creation" in response.json()["host"][0]
    server.refresh_from_db()
    assert server.host == "127.0.0.99"
    # The same value again is not a change.
    response = client.patch(
        f"/api/v1/servers/{server.pk}/", {"host": "127.0.0.99", "name": "alpha-renamed"}, format="json"
    )
    assert response.status_code == 200, response.json()
    env = inventory["env_a"]
    response = client.patch(f"/api/v1/environments/{env.pk}/", {"compose_project": "other-key"}, format="json")
    assert response.status_code == 400 and "compose_project" in response.json()
