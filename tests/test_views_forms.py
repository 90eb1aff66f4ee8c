"""Form input is refused with a clear error (nothing created), login lockout, audit events, secrets never shown."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.urls import reverse

from panel.accounts.models import AuditEvent
from panel.inventory import services
from panel.inventory.models import Environment, Project, Server
from panel.remote import HostKey, Unreachable
from panel.remote.ssh import generate_key_pair
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

BAD_NAMES = ["; rm -rf /", "$(touch x)", "-oProxyCommand=x", "a\nb", "x" * 300, "`id`", "a|b"]
BAD_HOSTS = ["; rm -rf /", "$(touch x)", "-oProxyCommand=x", "a\nb", "h" * 300, "host name", "example.com;id"]
BAD_USERS = ["-oProxyCommand=x", "-root", "; rm -rf /", "$(touch x)", "a\nb", "u" * 40, "Root"]
FAKE_HOST_KEY = HostKey(
    key_type="ssh-ed25519", base64="AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFake", fingerprint="SHA256:fake"
)


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record host key reads instead of connecting; a bad value must never get this far."""
    calls: list[tuple[str, int]] = []

    def fake_fetch(host: str, port: int) -> HostKey:
        calls.append((host, port))
        return FAKE_HOST_KEY

    monkeypatch.setattr(services, "fetch_host_key", fake_fetch)
    return calls


def server_data(orgs: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data = {"organization": orgs["a"].pk, "name": "web-1", "host": "10.0.0.5", "port": 22, "username": "deploy"}
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("field", "values"),
    [("name", BAD_NAMES), ("host", BAD_HOSTS), ("username", BAD_USERS), ("port", [0, 70000, -1, "22; id"])],
)
def test_it_refuses_bad_server_input(
    users: Any, orgs: Any, no_network: list[Any], field: str, values: list[Any]
) -> None:
    client = client_for(users["alice"])
    for value in values:
        response = client.post(reverse("server_create"), server_data(orgs, **{field: value}))
        assert response.status_code == 200, f"{field}={value!r} was accepted"
        form = response.context["form"]
        assert form.errors.get(field), f"{field}={value!r}: no error on the field ({form.errors})"
        assert 'aria-invalid="true"' in response.content.decode()
    assert not Server.objects.exists()
    assert no_network == []


def test_it_refuses_an_unreadable_private_key(users: Any, orgs: Any, no_network: list[Any]) -> None:
    response = client_for(users["alice"]).post(
        reverse("server_create"), server_data(orgs, private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n")
    )
    assert "This private key cannot be read" in response.content.decode()
    assert "nope" not in response.content.decode()
    assert not Server.objects.exists()


def test_it_refuses_creating_in_an_organization_without_change(users: Any, orgs: Any, no_network: list[Any]) -> None:
    response = client_for(users["alice"]).post(reverse("server_create"), server_data(orgs, organization=orgs["b"].pk))
    assert response.context["form"].errors.get("organization")
    assert not Server.objects.exists()


def test_it_shows_an_unreachable_host_as_a_form_error(users: Any, orgs: Any, monkeypatch: Any) -> None:
    def unreachable(host: str, port: int) -> HostKey:
        raise Unreachable(f"{host}:{port} refused the connection: is sshd running and is the port right?")

    monkeypatch.setattr(services, "fetch_host_key", unreachable)
    response = client_for(users["alice"]).post(reverse("server_create"), server_data(orgs))
    assert response.status_code == 200
    assert "10.0.0.5:22 refused the connection" in response.content.decode()
    assert not Server.objects.exists()


def test_it_adds_a_server_and_pins_the_confirmed_fingerprint(users: Any, orgs: Any, no_network: list[Any]) -> None:
    private, public = generate_key_pair("mine")
    client = client_for(users["alice"])
    response = client.post(reverse("server_create"), server_data(orgs, private_key=private))
    server = Server.objects.get()
    assert response.url == reverse("server_confirm", args=[server.pk])
    page = client.get(response.url).content.decode()
    assert "SHA256:fake" in page
    assert "ssh-ed25519" in page
    assert public.split()[1] in page
    assert "PRIVATE KEY" not in page
    assert server.host_key_confirmed_at is None
    client.post(response.url, {"fingerprint": "SHA256:other"})
    server.refresh_from_db()
    assert server.host_key_confirmed_at is None
    client.post(response.url, {"fingerprint": "SHA256:fake"})
    server.refresh_from_db()
    assert server.host_key_confirmed_at is not None
    assert server.status == "unvalidated"
    actions = set(AuditEvent.objects.filter(object_id=str(server.pk)).values_list("action", flat=True))
    assert {"server.created", "server.host_key_confirmed"} <= actions
    detail = client.get(reverse("server_detail", args=[server.pk])).content.decode()
    assert "PRIVATE KEY" not in detail
    assert public.split()[1] in detail


def project_data(orgs: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data = {
        "organization": orgs["a1"].pk,
        "name": "Webshop",
        "slug": "webshop",
        "git_url": "git@github.com:acme/webshop.git",
        "default_branch": "main",
        "odoo_version": "17.0",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("name", BAD_NAMES),
        ("slug", ["-x", "A B", "x;y", "$(touch x)", "s" * 300]),
        (
            "git_url",
            [
                "--upload-pack=touch /tmp/x",
                "-oProxyCommand=x",
                "ext::sh -c touch% /tmp/x",
                "https://h/a b",
                "a\nb",
                "file:///etc/passwd",
                "https://example.com/../../x",
            ],
        ),
        ("default_branch", ["--output=/tmp/x", "-b", "a..b", "a b", "a\nb", "x;rm", "$(touch x)"]),
    ],
)
def test_it_refuses_bad_project_input(users: Any, orgs: Any, field: str, values: list[str]) -> None:
    client = client_for(users["olga"])
    for value in values:
        response = client.post(reverse("project_create"), project_data(orgs, **{field: value}))
        assert response.status_code == 200, f"{field}={value!r} was accepted"
        assert response.context["form"].errors.get(field), f"{field}={value!r}: no error on the field"
    assert not Project.objects.exists()


def test_a_project_created_with_a_blank_name_is_named_after_its_slug(users: Any, orgs: Any) -> None:
    response = client_for(users["olga"]).post(reverse("project_create"), project_data(orgs, name="  "))
    project = Project.objects.get()
    assert response.url == reverse("project_detail", args=[project.pk])
    assert project.name == project.slug


def test_it_creates_a_project_with_an_audit_event(users: Any, orgs: Any) -> None:
    response = client_for(users["olga"]).post(reverse("project_create"), project_data(orgs))
    project = Project.objects.get()
    assert response.url == reverse("project_detail", args=[project.pk])
    assert project.organization == orgs["a1"]
    assert project.deploy_public_key.startswith("ssh-ed25519 ")
    assert AuditEvent.objects.filter(action="project.created", object_id=str(project.pk), actor=users["olga"]).exists()
    page = client_for(users["olga"]).get(response.url).content.decode()
    assert "PRIVATE KEY" not in page


def environment_data(inventory: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data = {
        "name": "staging",
        "kind": "staging",
        "server": inventory["server_a"].pk,
        "git_ref": "main",
        "domain": "staging.example.com",
        "compose_files_text": "prod.yaml",
        "env_vars_text": "PGUSER=odoo\nLIST_DB=false",
        "secrets_text": "",
        "workers": 2,
        "cron_threads": 1,
        "cpu_limit": "",
        "memory_limit": "",
        "backup_keep_daily": 7,
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("name", ["; rm -rf /", "$(touch x)", "-oProxyCommand=x", "a\nb", "e" * 300, "Prod"]),
        ("git_ref", ["--upload-pack=x", "-oProxyCommand=x", "a..b", "$(touch x)", "a\nb", "r" * 300]),
        ("domain", ["; rm -rf /", "-oProxyCommand=x", "a\nb", "d" * 300, "no_dots"]),
        ("compose_files_text", ["../etc/passwd.yaml", "-f.yaml", "x.yaml;id", "$(touch x).yaml", "a/b.yaml"]),
        ("env_vars_text", ["1BAD=x", "NO_EQUALS", "A-B=x", "X=$(touch x)\x1b", "$(touch x)=1", "A=1\nA=2"]),
        ("secrets_text", ["1BAD=x", "NO_EQUALS", "A B=x", "-o=1"]),
        ("memory_limit", ["1g; rm", "-1g", "lots"]),
        ("workers", [-1, 1000]),
    ],
)
def test_it_refuses_bad_environment_input(users: Any, inventory: Any, field: str, values: list[Any]) -> None:
    client = client_for(users["alice"])
    url = reverse("environment_create", args=[inventory["project_a"].pk])
    before = Environment.objects.count()
    for value in values:
        response = client.post(url, environment_data(inventory, **{field: value}))
        assert response.status_code == 200, f"{field}={value!r} was accepted"
        assert response.context["form"].errors.get(field), f"{field}={value!r}: no error on the field"
    assert Environment.objects.count() == before


def test_it_refuses_another_organizations_server_for_an_environment(users: Any, inventory: Any) -> None:
    # Bob owns B's server and A1's project is not his: the project answers 404; Alice cannot pick B's server.
    client = client_for(users["alice"])
    url = reverse("environment_create", args=[inventory["project_a"].pk])
    response = client.post(url, environment_data(inventory, server=inventory["server_b"].pk))
    assert response.context["form"].errors.get("server")
    assert not Environment.objects.filter(name="staging").exists()


def test_it_preselects_the_only_server_for_a_new_environment(users: Any, inventory: Any) -> None:
    client = client_for(users["alice"])
    url = reverse("environment_create", args=[inventory["project_a"].pk])
    server = inventory["server_a"]
    page = client.get(url).content.decode()
    assert f'<option value="{server.pk}" selected>' in page
    Server.objects.create(
        organization=server.organization, name="alpha-2", host="127.0.0.98", port=22, username="deploy",
        private_key=server.private_key, public_key=server.public_key,
    )  # fmt: skip
    page = client.get(url).content.decode()
    assert '<option value="" selected>' in page, "two servers: the user picks"


SECRET_VALUE = "s3cr3t-Value-that-must-never-render-0x5f"


def test_it_never_renders_secret_values(users: Any, inventory: Any) -> None:
    client = client_for(users["alice"])
    url = reverse("environment_create", args=[inventory["project_a"].pk])
    response = client.post(url, environment_data(inventory, secrets_text=f"ADMIN_PASSWORD={SECRET_VALUE}\nDB_PW=x2"))
    environment = Environment.objects.get(name="staging")
    assert response.url == reverse("environment_detail", args=[environment.pk])
    assert environment.get_secrets() == {"ADMIN_PASSWORD": SECRET_VALUE, "DB_PW": "x2"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT secrets FROM inventory_environment WHERE id = %s", [environment.pk])
        assert SECRET_VALUE not in cursor.fetchone()[0]  # encrypted at rest
    pages = [
        reverse("environment_detail", args=[environment.pk]),
        reverse("environment_edit", args=[environment.pk]),
        reverse("project_detail", args=[environment.project.pk]),
    ]
    for user in ("alice", "victor", "carol"):
        for page in pages:
            html = client_for(users[user]).get(page).content.decode()
            assert SECRET_VALUE not in html, f"{user} sees the secret on {page}"
    detail = client.get(pages[0]).content.decode()
    assert "ADMIN_PASSWORD" in detail
    # A form error must not echo the secret that was just typed either.
    response = client.post(
        reverse("environment_edit", args=[environment.pk]),
        environment_data(inventory, secrets_text=f"ADMIN_PASSWORD={SECRET_VALUE}", domain="bad domain"),
    )
    assert response.status_code == 200
    assert SECRET_VALUE not in response.content.decode()
    assert SECRET_VALUE not in "".join(str(e.detail) for e in AuditEvent.objects.all())


def test_it_keeps_secrets_when_the_field_is_left_blank(users: Any, inventory: Any) -> None:
    environment = inventory["env_a"]
    environment.set_secrets({"ADMIN_PASSWORD": SECRET_VALUE})
    environment.save()
    client = client_for(users["alice"])
    url = reverse("environment_edit", args=[environment.pk])
    response = client.post(url, environment_data(inventory, env_vars_text="WORKERS_NOTE=x", domain="shop.example.com"))
    assert response.status_code == 302, response.context["form"].errors
    environment.refresh_from_db()
    assert environment.get_secrets() == {"ADMIN_PASSWORD": SECRET_VALUE}
    assert environment.env_vars == {"WORKERS_NOTE": "x"}
    assert environment.domain == "shop.example.com"
    assert AuditEvent.objects.filter(action="environment.updated", object_id=str(environment.pk)).exists()
    client.post(url, environment_data(inventory, secrets_text="NEW_SECRET=y"))
    environment.refresh_from_db()
    assert environment.get_secrets() == {"NEW_SECRET": "y"}
    client.post(url, environment_data(inventory, clear_secrets="on"))
    environment.refresh_from_db()
    assert environment.get_secrets() == {}


def test_it_deletes_with_an_audit_event(users: Any, inventory: Any) -> None:
    client = client_for(users["alice"])
    environment = inventory["env_a"]
    # Removing an environment from the panel needs a choice: here, leave it running on its server.
    assert (
        client.post(reverse("environment_delete", args=[environment.pk]), {"choice": "leave_running"}).status_code
        == 302
    )
    assert not Environment.objects.filter(pk=environment.pk).exists()
    assert AuditEvent.objects.filter(action="environment.deleted", object_id=str(environment.pk)).exists()
    # A server still used by an environment is not deleted.
    response = client.post(reverse("server_delete", args=[inventory["server_b"].pk]))
    assert response.status_code == 404
    server = inventory["server_a"]
    Environment.objects.create(
        project=inventory["project_a"], server=server, name="x", compose_files=["prod.yaml"], compose_project="x"
    )
    client.post(reverse("server_delete", args=[server.pk]))
    assert Server.objects.filter(pk=server.pk).exists()


def login(client: Client, username: str, password: str) -> Any:
    return client.post(reverse("login"), {"username": username, "password": password})


def test_it_logs_in_and_records_it(users: Any, inventory: Any) -> None:
    client = Client()
    response = login(client, "alice", PASSWORD)
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="login.succeeded", actor=users["alice"]).exists()
    # Alice starts in her own organization (A), not in the customer organization A1 it manages.
    assert "alpha-1" in client.get(reverse("server_list")).content.decode()


def test_it_locks_out_after_too_many_failures(users: Any) -> None:
    client = Client()
    attempts = settings.LOGIN_LOCKOUT_ATTEMPTS
    for _ in range(attempts):
        response = login(client, "alice", "wrong password")
        assert response.status_code == 200
        assert "Too many failed attempts" not in response.content.decode()
    assert AuditEvent.objects.filter(action="login.failed", is_security=True).count() == attempts
    # Now even the right password is refused, without being checked.
    response = login(client, "alice", PASSWORD)
    assert response.status_code == 200
    assert "Too many failed attempts; try again later." in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="login.locked", detail__username="alice").count() == 1
    assert not AuditEvent.objects.filter(action="login.succeeded").exists()
    # Another user from another address is not affected.
    other = Client(REMOTE_ADDR="10.9.9.9")
    assert login(other, "olga", PASSWORD).status_code == 302


def test_it_never_records_the_password(users: Any) -> None:
    login(Client(), "alice", "hunter2-typed-password")
    events = AuditEvent.objects.filter(action="login.failed")
    assert events.count() == 1
    assert "hunter2" not in str(events.get().detail)


def test_it_logs_out_by_post_only(users: Any) -> None:
    client = Client()
    login(client, "alice", PASSWORD)
    assert client.get(reverse("logout")).status_code == 405
    assert "_auth_user_id" in client.session
    assert client.post(reverse("logout")).status_code == 302
    assert "_auth_user_id" not in client.session


def test_it_shows_a_new_token_once(users: Any) -> None:
    client = client_for(users["alice"])
    response = client.post(reverse("api_tokens"), {"name": "ci", "scope": "write", "days": 30})
    html = response.content.decode()
    token = users["alice"].api_tokens.get()
    marker = f"dp_{token.prefix}_"
    assert marker in html
    assert response["Cache-Control"].startswith("max-age=0")
    assert marker not in client.get(reverse("api_tokens")).content.decode()
    assert client.post(reverse("api_tokens"), {"name": "; rm -rf /", "scope": "read", "days": 30}).status_code == 200
    assert client.post(reverse("api_tokens"), {"name": "long", "scope": "read", "days": 99999}).status_code == 200
    assert users["alice"].api_tokens.count() == 1
    client.post(reverse("revoke_api_token", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_it_escapes_names_everywhere(users: Any, inventory: Any) -> None:
    from panel.accounts.services import record

    record(
        action="login.failed", actor_name="<script>alert(1)</script>", organization=inventory["server_a"].organization
    )
    html = client_for(users["alice"]).get(reverse("audit_log")).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_it_sends_a_csp_without_inline_scripts(users: Any, inventory: Any) -> None:
    response = client_for(users["alice"]).get(reverse("server_detail", args=[inventory["server_a"].pk]))
    assert "script-src 'self'" in response["Content-Security-Policy"]
    html = response.content.decode()
    import re

    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert " style=" not in html
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"


def test_it_links_the_running_job_when_the_server_is_busy(users: Any, inventory: Any) -> None:
    from django.utils import timezone

    from panel.jobs.models import Job

    server = inventory["server_a"]
    client = client_for(users["alice"])
    response = client.post(reverse("server_validate", args=[server.pk]))
    assert response.url == reverse("server_confirm", args=[server.pk])  # not pinned yet: nothing queued
    assert not Job.objects.exists()
    Server.objects.filter(pk=server.pk).update(host_key_confirmed_at=timezone.now())
    response = client.post(reverse("server_validate", args=[server.pk]))
    job = Job.objects.get()
    assert response.url == reverse("job_detail", args=[job.pk])
    assert job.lock_key == f"server:{server.pk}"
    response = client.post(reverse("server_validate", args=[server.pk]), follow=True)
    html = response.content.decode()
    assert f'<a href="{reverse("job_detail", args=[job.pk])}">Validate server #{job.pk}</a>' in html
    assert Job.objects.count() == 1
    assert AuditEvent.objects.filter(action="server.validate", object_id=str(server.pk)).count() == 1


def test_it_downloads_the_log_as_plain_text(users: Any, inventory: Any) -> None:
    from panel.jobs.models import Job, JobLogLine

    job = Job.objects.create(kind="validate_server", organization=inventory["server_a"].organization, last_seq=2)
    JobLogLine.objects.create(job=job, seq=1, text="first <b>line</b>")
    JobLogLine.objects.create(job=job, seq=2, stream="err", text="second line")
    response = client_for(users["victor"]).get(reverse("job_log_download", args=[job.pk]))
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    text = b"".join(response.streaming_content).decode()
    assert text.index("first <b>line</b>") < text.index("second line")
    assert " err " in text
