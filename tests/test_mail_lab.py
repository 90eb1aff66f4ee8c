"""The mail catcher against the lab: a test environment of the sample project deployed on lab1 (test.yaml's
``smtp`` service, the lab's MailHog stand-in), mails sent from its odoo container to ``smtplocal:1025``, read
through the panel (pages, API) over the server's SSH connection; and in Chromium, a mail's HTML that carries
scripts runs none of them."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from django.test import Client
from playwright.sync_api import Browser, expect
from rest_framework.test import APIClient

from mailcatcher import services
from panel.inventory.models import Environment
from panel.inventory.services import create_environment, create_project
from tests.conftest import PASSWORD
from tests.deploy_fixtures import deploy, log_text
from tests.lab.lab import SAMPLE_BRANCH

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

TEST_KEY = "panel-demo-16-0-test"
SEND = r"""
import json, smtplib, sys
from email.message import EmailMessage
spec = json.loads(sys.argv[1])
message = EmailMessage()
message["From"], message["To"], message["Subject"] = spec["from"], spec["to"], spec["subject"]
message.set_content(spec["text"])
if spec.get("html"):
    message.add_alternative(spec["html"], subtype="html")
if spec.get("attachment"):
    message.add_attachment(spec["attachment"].encode(), maintype="text", subtype="csv", filename="report.csv")
with smtplib.SMTP("smtplocal", 1025, timeout=10) as smtp:
    smtp.send_message(message)
"""
# Each would leave a mark the test looks for, if any script ran: in the frame, towards the panel's page, or
# by navigating the panel's page away.
SCRIPTED_HTML = """<html><head><title>catcher</title></head><body>
<p data-x="1">Hello from the sandbox</p>
<script>document.title = "script ran"; parent.postMessage("script ran", "*"); top.location = "about:blank#ran";</script>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" onerror="parent.postMessage('onerror ran', '*')" onload="parent.postMessage('onload ran', '*')">
<svg><script>parent.postMessage("svg ran", "*")</script></svg>
</body></html>"""


def clean(host: Any) -> None:
    host.docker("compose", "-p", TEST_KEY, "down", "-v", "--remove-orphans", timeout=300)


@pytest.fixture
def test_env(jobs_worker: Any, lab1: Any, lab_sample: Any, users: dict[str, Any], orgs: dict[str, Any]) -> Any:
    """The sample project's test environment, deployed on lab1 (its smtp service included), removed afterwards."""
    from tests.lab_helpers import add_lab_server

    clean(lab1)
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    project = create_project(
        organization=orgs["a1"], actor=users["alice"], name="Panel demo", slug="panel-demo",
        git_url=str(lab_sample.sample_repo_path), odoo_version="16.0",
    )  # fmt: skip
    environment = create_environment(
        project=project, server=server, actor=users["alice"], name="test", kind="test",
        compose_files=["test.yaml"], git_ref=SAMPLE_BRANCH,
    )  # fmt: skip
    assert environment.compose_project == TEST_KEY
    deployment = deploy(environment, users["alice"], timeout=300)
    assert deployment.status == "succeeded", (deployment.job.reason, log_text(deployment)[-3000:])
    yield environment
    clean(lab1)


def container(host: Any, service: str) -> str:
    ids = host.docker("ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={TEST_KEY}",
                      "--filter", f"label=com.docker.compose.service={service}", check=True).stdout.split()  # fmt: skip
    assert len(ids) == 1, ids
    return str(ids[0])


def send_mail(host: Any, **spec: str) -> None:
    """Send a mail as Odoo would: from the odoo container, through smtplocal:1025."""
    result = host.docker("exec", container(host, "odoo"), "python3", "-c", SEND, json.dumps(spec), timeout=60)
    assert result.returncode == 0, result.stderr


def wait_listed(environment: Environment, subject: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        page = services.list_mails(environment=environment)
        found = [item for item in page.items if item.subject == subject]
        if found:
            return found[0]
        assert time.monotonic() < deadline, [item.subject for item in page.items]
        time.sleep(0.3)


def test_it_lists_and_shows_a_mail_sent_through_the_test_environments_smtp(
    test_env: Environment, lab1: Any, users: dict[str, Any]
) -> None:
    smtp = container(lab1, "smtp")
    # Reached over SSH to the container's address: nothing of the catcher is published on the server.
    ports = lab1.docker("inspect", "--format", "{{json .NetworkSettings.Ports}} {{json .HostConfig.PortBindings}}",
                        smtp, check=True).stdout  # fmt: skip
    assert "HostPort" not in ports, ports
    send_mail(lab1, **{"from": "odoo@test.panel-demo.example.com", "to": "jane@example.com",
                       "subject": "Invoice INV/2026/0007", "text": "Dear Jane,\nyour invoice is attached.",
                       "attachment": "id,amount\n7,120.00\n"})  # fmt: skip
    send_mail(lab1, **{"from": "noreply@test.panel-demo.example.com", "to": "bob@example.com",
                       "subject": "Password reset", "text": "Reset it."})  # fmt: skip
    listed = wait_listed(test_env, "Invoice INV/2026/0007")
    catcher = services.locate(test_env)
    assert (catcher.kind, catcher.service, catcher.container) == ("mailhog", "smtp", smtp)

    victor = Client()
    victor.force_login(users["victor"])
    page = victor.get(f"/environments/{test_env.pk}/mails/")
    assert page.status_code == 200, page.content[:2000]
    text = page.content.decode()
    assert "Invoice INV/2026/0007" in text and "jane@example.com" in text and "Password reset" in text
    assert "MailHog" in text
    searched = victor.get(f"/environments/{test_env.pk}/mails/", {"q": "bob@", "kind": "to"}).content.decode()
    assert "Password reset" in searched and "Invoice INV/2026/0007" not in searched
    detail = victor.get(f"/environments/{test_env.pk}/mails/{listed.id}/")
    assert detail.status_code == 200
    body = detail.content.decode()
    assert "your invoice is attached." in body and "report.csv" in body and "odoo@test.panel-demo.example.com" in body
    part = next(a for a in services.get_mail(environment=test_env, message_id=listed.id).attachments)
    download = victor.get(f"/environments/{test_env.pk}/mails/{listed.id}/attachments/{part.part}/")
    assert download.status_code == 200 and download.content == b"id,amount\n7,120.00\n"

    api = APIClient()
    api.force_authenticate(users["olga"])
    one = api.get(f"/api/v1/environments/{test_env.pk}/mails/{listed.id}/")
    assert one.status_code == 200 and one.json()["subject"] == "Invoice INV/2026/0007"
    assert api.delete(f"/api/v1/environments/{test_env.pk}/mails/").status_code == 204
    assert services.list_mails(environment=test_env).total == 0
    assert "No mail caught yet." in victor.get(f"/environments/{test_env.pk}/mails/").content.decode()


def test_it_runs_no_script_of_a_mails_html_in_the_browser(
    test_env: Environment, lab1: Any, live_server_url: str, browser: Browser
) -> None:
    send_mail(lab1, **{"from": "odoo@test.panel-demo.example.com", "to": "jane@example.com",
                       "subject": "Scripted newsletter", "text": "Plain version.", "html": SCRIPTED_HTML})  # fmt: skip
    listed = wait_listed(test_env, "Scripted newsletter")

    # The marks can be seen: the same HTML served as an ordinary page runs its script, which navigates it away.
    control = browser.new_page()
    control.route("http://control.test/", lambda route: route.fulfill(body=SCRIPTED_HTML, content_type="text/html"))
    control.goto("http://control.test/", wait_until="commit")
    control.wait_for_url("about:blank#ran")
    control.close()

    page = browser.new_page()
    page.add_init_script("window.__marks = []; addEventListener('message', e => window.__marks.push(e.data));")
    page.goto(f"{live_server_url}/login/")
    page.locator("#id_username").fill("alice")
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server_url}/dashboard/")
    page.goto(f"{live_server_url}/environments/{test_env.pk}/mails/")
    page.get_by_role("link", name="Scripted newsletter").click()
    page.wait_for_url(f"**/mails/{listed.id}/")
    frame = page.frame_locator('iframe[data-testid="mail-html"]')
    expect(frame.locator("p")).to_have_text("Hello from the sandbox")  # the HTML is shown
    expect(page.get_by_test_id("mail-text")).to_contain_text("Plain version.")
    page.wait_for_timeout(1500)  # time for anything that would run
    assert page.evaluate("window.__marks") == []
    assert page.url.endswith(f"/mails/{listed.id}/") and "ran" not in page.url
    assert page.title().startswith("Scripted newsletter")
    inner = next(f for f in page.frames if f.url.endswith(f"/mails/{listed.id}/html/"))
    assert inner.title() == "catcher"  # its own script would have renamed it
