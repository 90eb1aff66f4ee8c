"""The server's proxy: its compose file, its settings (API and form refusals) and the job that installs it (API and
button: one server job at a time). The proxy running for real is tests/test_traefik_lab.py."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from panel.accounts.models import AuditEvent
from panel.inventory.certificates import served_certificate
from panel.inventory.models import Server
from panel.inventory.proxy import PROJECT, proxy_compose
from panel.jobs.models import Job
from tests.conftest import PASSWORD
from tests.lab.traefik import tls_material

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(users: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(users["alice"])
    return client


@pytest.fixture
def pinned_server(inventory: Any) -> Server:
    server: Server = inventory["server_a"]
    server.host_key_confirmed_at = timezone.now()
    server.save()
    return server


def test_it_writes_a_traefik_with_docker_entrypoints_redirect_and_acme(settings: Any) -> None:
    settings.ACME_EMAIL = "ops@example.com"
    server = Server(pk=3, name="web", host="web.example.com", username="deploy")
    document = proxy_compose(server, "/var/run/docker.sock")
    assert document["name"] == PROJECT
    assert document["networks"] == {"inverseproxy_shared": {"external": True}}
    assert document["volumes"] == {"acme": {}}
    traefik = document["services"]["traefik"]
    assert traefik["ports"] == ["80:80", "443:443"]
    assert traefik["networks"] == ["inverseproxy_shared"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in traefik["volumes"]
    assert "acme:/acme" in traefik["volumes"]
    command = traefik["command"]
    for flag in (
        "--providers.docker.exposedByDefault=false",
        "--entryPoints.web.address=:80",
        "--entryPoints.websecure.address=:443",
        "--entryPoints.web.http.redirections.entryPoint.to=websecure",
        "--certificatesResolvers.panel.acme.caServer=https://acme-v02.api.letsencrypt.org/directory",
        "--certificatesResolvers.panel.acme.storage=/acme/acme.json",
        "--certificatesResolvers.panel.acme.httpChallenge.entryPoint=web",
        "--certificatesResolvers.panel.acme.email=ops@example.com",
    ):
        assert flag in command, flag
    assert "environment" not in traefik


def test_it_publishes_on_the_servers_address_and_trusts_its_acme_ca() -> None:
    server = Server(
        pk=3, name="lab", host="127.0.0.11", username="deploy", proxy_bind_address="127.0.0.11",
        proxy_http_port=18080, proxy_https_port=18443, acme_directory_url="https://10.1.0.1:14000/dir",
        acme_email="me@example.com", acme_ca_certificate="-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----",
    )  # fmt: skip
    traefik = proxy_compose(server, "/run/lab1/docker.sock")["services"]["traefik"]
    assert traefik["ports"] == ["127.0.0.11:18080:80", "127.0.0.11:18443:443"]
    assert "/run/lab1/docker.sock:/var/run/docker.sock:ro" in traefik["volumes"]
    assert "./acme-ca.pem:/etc/traefik/acme-ca.pem:ro" in traefik["volumes"]
    assert traefik["environment"] == {"LEGO_CA_CERTIFICATES": "/etc/traefik/acme-ca.pem"}
    assert "--certificatesResolvers.panel.acme.caServer=https://10.1.0.1:14000/dir" in traefik["command"]
    assert "--certificatesResolvers.panel.acme.email=me@example.com" in traefik["command"]
    v6 = Server(pk=4, name="v6", host="h.example.com", username="d", proxy_bind_address="2001:db8::1")
    assert proxy_compose(v6, "/s")["services"]["traefik"]["ports"][1] == "[2001:db8::1]:443:443"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("proxy_bind_address", "127.0.0.1; id"),
        ("proxy_bind_address", "example.com"),
        ("proxy_http_port", 0),
        ("proxy_https_port", 70000),
        ("acme_email", "not an email"),
        ("acme_directory_url", "http://acme.example.com/dir"),
        ("acme_directory_url", "https://x`) || Host(`y/dir"),
        ("acme_ca_certificate", "not a certificate"),
    ],
)
def test_it_refuses_bad_proxy_settings(alice: APIClient, pinned_server: Server, field: str, value: Any) -> None:
    response = alice.patch(f"/api/v1/servers/{pinned_server.pk}/", {field: value}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_it_saves_proxy_settings_from_the_api_and_the_form(users: Any, alice: APIClient, pinned_server: Server) -> None:
    body = {"proxy_bind_address": "127.0.0.11", "proxy_https_port": 8443, "acme_email": "ops@example.com"}
    response = alice.patch(f"/api/v1/servers/{pinned_server.pk}/", body, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["proxy_https_port"] == 8443
    client = Client()
    assert client.login(username=users["alice"].username, password=PASSWORD)
    form = {"name": pinned_server.name, "port": 22, "username": "deploy", "labels_text": "", "acme_email": "x"}
    response = client.post(f"/servers/{pinned_server.pk}/edit/", form)
    assert response.status_code == 200
    assert response.context["form"].errors.get("acme_email")
    form |= {"acme_email": "tls@example.com", "acme_directory_url": "https://acme.example.com/directory"}
    response = client.post(f"/servers/{pinned_server.pk}/edit/", form)
    assert response.status_code == 302
    pinned_server.refresh_from_db()
    assert pinned_server.acme_email == "tls@example.com"
    assert pinned_server.proxy_https_port == 8443  # left out of the form: kept


def test_it_queues_one_proxy_install_per_server(alice: APIClient, pinned_server: Server) -> None:
    url = f"/api/v1/servers/{pinned_server.pk}/proxy/"
    first = alice.post(url)
    assert first.status_code == 202, first.content
    job = first.json()["job"]
    assert job["kind"] == "install_proxy" and job["status"] == "queued"
    assert Job.objects.get(pk=job["id"]).lock_key == f"server:{pinned_server.pk}"
    second = alice.post(url)
    assert second.status_code == 409, second.content
    assert second.json()["job"] == job["id"]
    # A validation holds the same lock: it waits for the proxy job.
    assert alice.post(f"/api/v1/servers/{pinned_server.pk}/validate/").status_code == 409
    assert AuditEvent.objects.filter(action="server.proxy", object_id=str(pinned_server.pk)).count() == 1


def test_it_refuses_a_proxy_install_before_the_host_key_is_confirmed(alice: APIClient, inventory: Any) -> None:
    response = alice.post(f"/api/v1/servers/{inventory['server_a'].pk}/proxy/")
    assert response.status_code == 409
    assert "host key" in response.json()["detail"]
    assert not Job.objects.exists()


def test_it_installs_the_proxy_from_the_server_page(users: Any, pinned_server: Server) -> None:
    client = Client()
    assert client.login(username=users["alice"].username, password=PASSWORD)
    page = client.get(f"/servers/{pinned_server.pk}/").content.decode()
    assert f'action="/servers/{pinned_server.pk}/proxy/"' in page
    response = client.post(f"/servers/{pinned_server.pk}/proxy/")
    job = Job.objects.get(server=pinned_server, kind="install_proxy")
    assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"


def test_it_reads_the_certificate_a_tls_server_serves_for_a_name(tmp_path: Any) -> None:
    ca_pem, cert_pem, key_pem = tls_material("127.0.0.1")
    (tmp_path / "cert.pem").write_text(cert_pem + ca_pem)
    (tmp_path / "key.pem").write_text(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,return-value]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with contextlib.suppress(OSError), context.wrap_socket(connection, server_side=True):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    server = Server(name="s", host="unused.example.com", username="d", proxy_bind_address="127.0.0.1",
                    proxy_https_port=port)  # fmt: skip
    certificate = served_certificate(server, "erp.example.com")
    thread.join(5)
    listener.close()
    assert names == ["erp.example.com"]
    assert certificate.issuer == "doodba-panel lab Pebble TLS CA"
    assert certificate.subject == "127.0.0.1" and not certificate.is_traefik_default
    assert certificate.not_after > datetime.datetime.now(datetime.UTC)


def test_it_links_the_domain_and_shows_the_certificate_on_the_environment_page(users: Any, inventory: Any) -> None:
    environment = inventory["env_a"]
    environment.domain, environment.aliases = "shop.example.com", ["www.shop.example.com"]
    environment.save()
    client = Client()
    assert client.login(username=users["alice"].username, password=PASSWORD)
    page = client.get(f"/environments/{environment.pk}/").content.decode()
    assert 'href="https://shop.example.com/"' in page
    assert "www.shop.example.com → redirects here" in page
    assert "Not checked yet" in page
    environment.tls_certificate = {
        "issuer": "Pebble Intermediate CA 1a2b", "subject": "shop.example.com", "names": ["shop.example.com"],
        "not_after": "2027-03-01T10:20:00+00:00", "checked_at": "2026-12-01T09:00:00+00:00",
    }  # fmt: skip
    environment.save()
    page = client.get(f"/environments/{environment.pk}/").content.decode()
    assert "Issued by Pebble Intermediate CA 1a2b, expires 2027-03-01 10:20" in page
    assert "(checked 2026-12-01 09:00)" in page
