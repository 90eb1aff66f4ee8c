"""Domains and TLS for real: in a browser, a user adds a domain and an alias, installs the panel's Traefik on a lab
host and deploys; Traefik serves the environment over HTTPS with a certificate that Pebble (a real ACME CA) issued,
/websocket, the alias redirect, the database manager refused and HTTP redirected; installing again keeps the
certificate. (One test: each costs a deploy, a proxy and ACME issuance.)"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from typing import Any

import pytest
from django.test import Client

from deployments.models import Deployment
from panel.inventory.proxy import PROJECT, start_proxy_install
from panel.jobs.models import JobLogLine
from tests.deploy_fixtures import log_text
from tests.lab.traefik import ensure_traefik_image, pebble
from tests.lab_helpers import wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

DOMAIN = "erp.panel-demo.test"
ALIAS = "www.panel-demo.test"
HTTP_PORT = 18080
HTTPS_PORT = 18443


def job_log(job: Any) -> str:
    return "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))


def https_get(
    address: str, host: str, path: str, roots: str, timeout: float = 10
) -> tuple[int, dict[str, str], bytes, dict]:
    """GET over TLS to ``address``:HTTPS_PORT with SNI and Host ``host``, trusting only ``roots``."""
    context = ssl.create_default_context(cadata=roots)
    connection = http.client.HTTPSConnection(address, HTTPS_PORT, timeout=timeout, context=context)
    # SNI and certificate checks use the name, the TCP connection the lab's address.
    connection.sock = context.wrap_socket(
        socket.create_connection((address, HTTPS_PORT), timeout=timeout), server_hostname=host
    )
    connection.putrequest("GET", path, skip_host=True)
    connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    certificate = connection.sock.getpeercert()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body, certificate


def wait_for_certificate(address: str, host: str, roots: str, timeout: float = 120) -> tuple[int, bytes, dict]:
    """Until Traefik serves a certificate for ``host`` that chains to Pebble's root (it serves its own default
    certificate while the ACME order runs)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            status, _headers, body, certificate = https_get(address, host, "/web/health", roots)
            return status, body, certificate
        except (ssl.SSLError, OSError) as exc:
            last = exc
            time.sleep(1)
    raise AssertionError(f"no certificate from Pebble for {host} within {timeout} s: {last}")


def issuer(certificate: dict) -> str:
    return " ".join(value for field in certificate["issuer"] for key, value in field if key == "commonName")


def quick_health_check(lab_sample: Any) -> None:
    """Doodba's common.yaml checks odoo's health every 45 s, and Traefik routes a container only once Docker calls it
    healthy (the deploy waits for that before it reads the certificate): a commit checking every 2 s spares each
    test most of that wait."""
    common = lab_sample.sample_file("common.yaml")
    quick = common.replace("interval: 45s", "interval: 2s", 1)
    assert quick != common
    lab_sample.commit_to_sample({"common.yaml": quick}, "a quicker health check")


@pytest.fixture
def proxy_clean(lab1: Any):
    def clean() -> None:
        lab1.docker("compose", "-p", PROJECT, "down", "-v", "--remove-orphans", timeout=300)

    clean()
    yield
    clean()


def wait_for_job_page(page: Any) -> str:
    """The final status a job page shows."""
    page.wait_for_function(
        "() => { const b = document.querySelector('[data-testid=\"job-status\"]');"
        " return b && ['succeeded','failed','canceled','interrupted'].includes(b.textContent.trim()); }",
        timeout=480_000,
    )
    return str(page.get_by_test_id("job-status").inner_text().strip())


@pytest.mark.browser
def test_it_serves_a_domain_added_in_the_browser_over_https_with_a_certificate_from_pebble(
    live_server_url: str, deploy_env: Any, lab1: Any, lab_sample: Any, users: Any, browser: Any, proxy_clean: None
) -> None:
    import os
    import re

    from tests.test_browser_deploy import log_in

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    ensure_traefik_image(lab1.spec)
    quick_health_check(lab_sample)
    environment = deploy_env
    with pebble(lab1.spec) as ca:
        server = environment.server
        server.proxy_bind_address, server.proxy_http_port, server.proxy_https_port = lab1.address, HTTP_PORT, HTTPS_PORT
        server.acme_directory_url, server.acme_ca_certificate = ca.directory_url, ca.tls_ca_pem
        server.save()
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        log_in(page, live_server_url, "alice")

        # Add the domain and an alias on the environment's edit page.
        page.goto(f"{live_server_url}/environments/{environment.pk}/edit/")
        page.locator("#id_domain").fill(f"  {DOMAIN.upper()} ")
        page.locator("#id_aliases_text").fill(ALIAS)
        page.get_by_role("button", name=re.compile("Save")).click()
        page.wait_for_url(f"{live_server_url}/environments/{environment.pk}/")
        assert page.get_by_test_id("domain-link").get_attribute("href") == f"https://{DOMAIN}/"
        assert "Not checked yet" in page.get_by_test_id("certificate").inner_text()

        # Install the proxy from the server page, then deploy.
        page.goto(f"{live_server_url}/servers/{server.pk}/")
        page.get_by_role("button", name="Install proxy").click()
        page.wait_for_url(re.compile(r"/jobs/\d+/$"))
        assert wait_for_job_page(page) == "succeeded"
        assert f"{DOMAIN} resolves to nothing" in page.get_by_test_id("job-log").inner_text()
        page.goto(f"{live_server_url}/environments/{environment.pk}/")
        page.get_by_role("button", name="Deploy", exact=True).click()
        page.wait_for_url(re.compile(r"/deployments/\d+/$"))
        assert wait_for_job_page(page) == "succeeded"
        wait_for_certificate(lab1.address, DOMAIN, ca.issuing_roots())

        # The deploy read the certificate the domain is served with; the environment page shows it.
        page.goto(f"{live_server_url}/environments/{environment.pk}/")
        link = page.get_by_test_id("domain-link")
        assert link.inner_text() == f"https://{DOMAIN}" and link.get_attribute("href") == f"https://{DOMAIN}/"
        environment.refresh_from_db()
        expires = environment.certificate_facts()["not_after"]
        text = page.get_by_test_id("certificate").inner_text()
        assert text.startswith(
            f"Issued by {environment.tls_certificate['issuer']}, expires {expires:%Y-%m-%d %H:%M}"
        ), text
        assert "Pebble" in text
        page.screenshot(path="/tmp/panel-domain-certificate.png", full_page=True)

        # The deploy checked the domains too and read the certificate as its last step.
        deployment = Deployment.objects.filter(environment=environment).latest("pk")
        text = log_text(deployment)
        assert f"⚠ {DOMAIN} resolves to nothing, not to this server" in text
        assert "The server's proxy does not run" not in text
        assert [step["name"] for step in deployment.job.result["steps"]][-1] == "Read the certificate"
        assert f"{DOMAIN}: certificate from {environment.tls_certificate['issuer']}, valid until" in text

        # What the proxy serves: HTTPS with Pebble's certificate, /websocket, the alias, the database manager
        # refused on production, HTTP redirected; installing again keeps the certificate.
        roots = ca.issuing_roots()
        status, body, certificate = wait_for_certificate(lab1.address, DOMAIN, roots)
        assert status == 200 and json.loads(body) == {"status": "pass"}
        assert "Pebble" in issuer(certificate), certificate
        assert ("DNS", DOMAIN) in certificate["subjectAltName"]
        assert certificate["notAfter"]
        first_serial = certificate["serialNumber"]

        # /websocket goes to Odoo's second port.
        status, _headers, body, _cert = https_get(lab1.address, DOMAIN, "/websocket", roots)
        assert status == 200 and json.loads(body) == {"port": 8072, "path": "/websocket"}
        status, _headers, body, _cert = https_get(lab1.address, DOMAIN, "/web/login", roots)
        assert status == 200 and b"login" in body

        # The alias has its own certificate and redirects to the same path on the main domain.
        wait_for_certificate(lab1.address, ALIAS, roots)
        status, headers, _body, certificate = https_get(lab1.address, ALIAS, "/web/login?x=1", roots)
        assert status in (301, 308), status
        assert headers["location"] == f"https://{DOMAIN}/web/login?x=1"
        assert ("DNS", ALIAS) in certificate["subjectAltName"]

        # Production: the proxy refuses the database manager (the stand-in, like Odoo, would show a page).
        status, _headers, body, _cert = https_get(lab1.address, DOMAIN, "/web/database/manager", roots)
        assert status == 403 and body.strip() == b"Forbidden", (status, body[:200])
        status, _headers, body, _cert = https_get(lab1.address, DOMAIN, "/web/database/selector", roots)
        assert status == 403 and b"database manager" not in body

        # Plain HTTP is redirected to HTTPS.
        connection = http.client.HTTPConnection(lab1.address, HTTP_PORT, timeout=10)
        connection.request("GET", "/web/health", headers={"Host": DOMAIN})
        response = connection.getresponse()
        assert response.status in (301, 308)
        assert response.getheader("Location", "").startswith(f"https://{DOMAIN}")
        connection.close()

        # Installing again changes nothing that works, keeps the certificate (the acme volume), and reads it for
        # the environment page.
        job = wait_job(start_proxy_install(server=server, actor=users["alice"]), timeout=300)
        log = job_log(job)
        assert job.status == "succeeded", job.reason
        assert "Network inverseproxy_shared: already present." in log
        status, body, served = wait_for_certificate(lab1.address, DOMAIN, roots)
        assert status == 200 and "Pebble" in issuer(served)
        assert served["serialNumber"] == first_serial
        environment.refresh_from_db()
        stored = environment.tls_certificate
        assert "Pebble" in stored["issuer"] and DOMAIN in stored["names"], stored
        expiry = ssl.cert_time_to_seconds(served["notAfter"])
        assert abs(environment.certificate_facts()["not_after"].timestamp() - expiry) < 1
        assert f"{DOMAIN}: certificate from {stored['issuer']}, valid until" in log
        client = Client()
        client.force_login(users["alice"])
        html = client.get(f"/environments/{environment.pk}/").content.decode()
        assert f'href="https://{DOMAIN}/"' in html
        assert (
            f"Issued by {stored['issuer']}, expires {environment.certificate_facts()['not_after']:%Y-%m-%d %H:%M}"
            in html
        )
