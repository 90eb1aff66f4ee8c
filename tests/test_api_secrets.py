"""Secrets never leave the panel through the API, and are encrypted at rest.

A server's private key, a project's deploy key and an environment's secret values are written through the API, then
every endpoint (lists, details, actions, the write responses themselves, the schema) is walked as each role: none of
them may appear at any depth. The database holds ciphertext only.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from rest_framework.test import APIClient

from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from panel.jobs.services import append_lines
from panel.remote.ssh import HostKey, generate_key_pair

pytestmark = pytest.mark.django_db

SECRET_VALUE = "s3cr3t-Value-that-must-never-leak"


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def key_body(private_key: str) -> str:
    """The base64 body of an OpenSSH private key."""
    lines = [line for line in private_key.strip().splitlines() if not line.startswith("-----")]
    return "".join(lines)


def private_seed(private_key: str) -> bytes:
    """The secret part of an Ed25519 key (the OpenSSH text also embeds the public key, which may be shown)."""
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.private_bytes_raw()


def carries_bytes(text: str, secret: bytes) -> bool:
    """Whether ``secret`` (or a 16-byte piece of it) is in ``text`` as hex or inside any base64 run, any alignment."""
    pieces = [secret[start : start + 16] for start in range(0, len(secret) - 15, 8)]
    if any(piece.hex() in text.lower() for piece in pieces):
        return True
    for run in re.findall(r"[A-Za-z0-9+/_-]{20,}", text):
        for shift in range(4):
            chunk = run[shift:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    decoded = decode(chunk)
                except ValueError:
                    continue
                if any(piece in decoded for piece in pieces):
                    return True
    return False


@pytest.fixture
def written(users: Any, orgs: Any, inventory: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Objects created and changed through the API with secrets; returns the responses and the secret strings."""
    monkeypatch.setattr(
        "panel.inventory.services.fetch_host_key",
        lambda host, port: HostKey(key_type="ssh-ed25519", base64="AAAAC3NzaC1lZDI1NTE5AAAAIQ", fingerprint="SHA256:x"),
    )
    alice = client_for(users["alice"])
    server_key, _ = generate_key_pair("server")
    deploy_key, _ = generate_key_pair("deploy")
    replaced_key, _ = generate_key_pair("replaced")
    responses = []
    server = alice.post(
        "/api/v1/servers/",
        {
            "organization": orgs["a"].pk,
            "name": "web-1",
            "host": "10.0.0.5",
            "username": "deploy",
            "private_key": server_key,
        },
        format="json",
    )
    responses.append(server)
    project = alice.post(
        "/api/v1/projects/",
        {
            "organization": orgs["a1"].pk,
            "name": "Shop Two",
            "slug": "shop2",
            "git_url": "/srv/git/s.git",
            "deploy_key": deploy_key,
        },
        format="json",
    )
    responses.append(project)
    environment = alice.post(
        "/api/v1/environments/",
        {
            "project": project.json()["id"],
            "server": server.json()["id"],
            "name": "prod",
            "secrets": {"ADMIN_PASSWORD": SECRET_VALUE},
            "env_vars": {"PLAIN": "visible"},
        },
        format="json",
    )
    responses.append(environment)
    assert [r.status_code for r in responses] == [201, 201, 201], [r.content for r in responses]
    responses.append(
        alice.patch(
            f"/api/v1/environments/{environment.json()['id']}/",
            {"secrets": {"DB_PASSWORD": SECRET_VALUE + "-2"}},
            format="json",
        )
    )
    responses.append(
        alice.patch(f"/api/v1/servers/{inventory['server_a'].pk}/", {"private_key": replaced_key}, format="json")
    )
    assert all(r.status_code == 200 for r in responses[3:]), [r.content for r in responses[3:]]
    job = Job.objects.create(kind=JobKind.DEPLOY, organization=orgs["a1"], environment_id=environment.json()["id"])
    append_lines(job.pk, [("out", "deploying")])
    return {
        "responses": responses,
        "secrets": [SECRET_VALUE, "PRIVATE KEY"],
        "seeds": [private_seed(server_key), private_seed(deploy_key), private_seed(replaced_key)],
        "server_id": server.json()["id"],
        "project_id": project.json()["id"],
        "environment_id": environment.json()["id"],
        "job_id": job.pk,
        "server_key": server_key,
        "deploy_key": deploy_key,
    }


def walk_keys(value: Any) -> set[str]:
    """Every key of every mapping in a JSON document, at any depth."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in walk_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in walk_keys(item)}
    return set()


def assert_clean(content: bytes, secrets: list[str], seeds: list[bytes], *, schema: bool = False) -> None:
    text = content.decode()
    for secret in secrets:
        assert secret not in text, f"{secret!r} in {text[:300]}"
    for seed in seeds:
        assert not carries_bytes(text, seed), f"private key material in {text[:300]}"
    if text.startswith(("{", "[")) and not schema:
        keys = walk_keys(json.loads(text))
        assert not keys & {"private_key", "deploy_key", "secrets", "key_hash"}, keys


def test_it_never_returns_keys_or_secret_values(users: Any, written: dict[str, Any]) -> None:
    secrets, seeds = written["secrets"], written["seeds"]
    for response in written["responses"]:
        assert_clean(response.content, secrets, seeds)
    urls = [
        "/api/v1/servers/",
        f"/api/v1/servers/{written['server_id']}/",
        "/api/v1/projects/",
        f"/api/v1/projects/{written['project_id']}/",
        "/api/v1/environments/",
        f"/api/v1/environments/{written['environment_id']}/",
        "/api/v1/jobs/",
        f"/api/v1/jobs/{written['job_id']}/",
        f"/api/v1/jobs/{written['job_id']}/lines/",
        "/api/v1/organizations/",
        "/api/v1/tokens/",
        "/api/v1/schema/",
        "/api/v1/schema/?format=json",
    ]
    seen = 0
    for name in ("alice", "olga", "victor", "carol", "bob"):
        client = client_for(users[name])
        for url in urls:
            response = client.get(url)
            assert response.status_code in (200, 404), (name, url, response.status_code)
            assert_clean(response.content, secrets, seeds, schema="/schema/" in url)
            seen += response.status_code == 200
        confirm = client.post(f"/api/v1/servers/{written['server_id']}/confirm-host-key/", {"fingerprint": "SHA256:x"})
        assert_clean(confirm.content, secrets, seeds)
    assert seen > 40
    staff_env = client_for(users["alice"]).get(f"/api/v1/environments/{written['environment_id']}/").json()
    assert staff_env["secret_names"] == ["ADMIN_PASSWORD", "DB_PASSWORD"]
    assert staff_env["env_vars"] == {"PLAIN": "visible"}


def test_it_stores_keys_and_secrets_encrypted(written: dict[str, Any], inventory: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT private_key FROM inventory_server WHERE id = %s", [written["server_id"]])
        (server_key,) = cursor.fetchone()
        cursor.execute("SELECT deploy_key FROM inventory_project WHERE id = %s", [written["project_id"]])
        (deploy_key,) = cursor.fetchone()
        cursor.execute("SELECT secrets FROM inventory_environment WHERE id = %s", [written["environment_id"]])
        (secrets,) = cursor.fetchone()
        cursor.execute("SELECT private_key FROM inventory_server WHERE id = %s", [inventory["server_a"].pk])
        (replaced,) = cursor.fetchone()
    for stored in (server_key, deploy_key, secrets, replaced):
        assert stored.startswith("gAAAA"), stored[:20]  # Fernet token
        assert "PRIVATE KEY" not in stored
        assert SECRET_VALUE not in stored
        assert "ADMIN_PASSWORD" not in stored
    assert key_body(written["server_key"])[:40] not in server_key
    assert key_body(written["deploy_key"])[:40] not in deploy_key
    # And the panel itself reads the plain values back.
    from panel.inventory.models import Environment, Server

    assert Server.objects.get(pk=written["server_id"]).private_key == written["server_key"]
    assert Environment.objects.get(pk=written["environment_id"]).get_secrets()["ADMIN_PASSWORD"] == SECRET_VALUE


def test_it_removes_a_secret_with_null_and_keeps_the_others(users: Any, written: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    url = f"/api/v1/environments/{written['environment_id']}/"
    response = alice.patch(url, {"secrets": {"ADMIN_PASSWORD": None}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["secret_names"] == ["DB_PASSWORD"]


def test_it_documents_secrets_as_write_only(users: Any) -> None:
    schema = client_for(users["alice"]).get("/api/v1/schema/?format=json").json()
    components = schema["components"]["schemas"]
    for name, component in components.items():
        properties = set(component.get("properties", {}))
        if name.endswith("Request"):
            continue
        assert not properties & {"private_key", "deploy_key", "secrets", "key_hash"}, name
    assert "private_key" in components["ServerRequest"]["properties"]
    assert "secret_names" in components["Environment"]["properties"]
