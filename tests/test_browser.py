"""The whole onboarding of a real server in a real browser: add, confirm the fingerprint, validate, watch it live.

Runs against uvicorn (HTTP + websockets), a real Celery worker and the lab host ``lab1`` (real sshd + dockerd).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from playwright.sync_api import Browser, Page, expect

from tests.conftest import PASSWORD

TERMINAL = ("succeeded", "failed", "canceled", "interrupted")

# Records, in the page, each log line's arrival together with the job status shown at that moment.
RECORD_LINES = """
window.__lineArrivals = [];
new MutationObserver(() => {
  const output = document.querySelector('[data-joblog-output]');
  const badge = document.querySelector('[data-testid="job-status"]');
  if (!output || !badge) return;
  const count = output.querySelectorAll('.line').length;
  const last = window.__lineArrivals[window.__lineArrivals.length - 1];
  if (count && (!last || last.count !== count)) {
    window.__lineArrivals.push({count: count, status: badge.textContent.trim(), at: Date.now()});
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
def owner(transactional_db: Any, make_user: Any) -> Any:
    from panel.accounts.models import Organization

    organization = Organization.objects.create(name="Lab Hosting", slug="lab-hosting")
    return make_user("lab-owner", organization, "owner")


def log_in(page: Page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/dashboard/")


@pytest.mark.browser
def test_it_logs_in_and_shows_the_layout_without_csp_violations(
    live_server_url: str, owner: Any, browser: Browser
) -> None:
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    log_in(page, live_server_url, "lab-owner")
    assert page.get_by_role("button", name="Add server").is_visible()
    assert page.get_by_role("link", name="Audit log").is_visible()
    page.goto(f"{live_server_url}/servers/new/")
    page.locator("#id_name").fill("bad")
    page.locator("#id_host").fill("-oProxyCommand=touch /tmp/x")
    page.locator("#id_username").fill("deploy")
    page.get_by_role("button", name="Read host key").click()
    assert page.locator(".errorlist").first.is_visible()
    page.screenshot(path="/tmp/panel-form-error.png", full_page=True)
    assert page.evaluate("typeof htmx") == "object"
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems


@pytest.mark.browser
@pytest.mark.lab
def test_it_onboards_and_validates_a_lab_server_live(
    live_server_url: str, jobs_worker: Any, transactional_db: Any, owner: Any, lab1: Any, browser: Browser
) -> None:
    from panel.inventory.models import Server

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    frames: list[tuple[float, dict[str, Any]]] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda payload: frames.append((time.monotonic(), json.loads(payload)))),
    )
    page.add_init_script(RECORD_LINES)
    log_in(page, live_server_url, "lab-owner")

    # Add the server: the panel reads its host key and shows the fingerprint to confirm.
    page.get_by_role("button", name="Add server").click()
    page.locator("#id_name").fill("lab1")
    page.locator("#id_host").fill(lab1.address)
    page.locator("#id_port").fill(str(lab1.port))
    page.locator("#id_username").fill(lab1.username)
    page.locator("#id_private_key").fill(lab1.private_key_pem)
    page.get_by_role("button", name="Read host key").click()
    page.wait_for_url(re.compile(r"/servers/\d+/confirm/$"))
    assert page.get_by_test_id("fingerprint").inner_text().strip() == lab1.host_key_fingerprint
    assert lab1.private_key_pem.strip().splitlines()[1] not in page.content()
    page.screenshot(path="/tmp/panel-confirm.png", full_page=True)
    page.get_by_role("button", name="I verified this fingerprint").click()
    page.wait_for_url(re.compile(r"/servers/\d+/$"))
    server = Server.objects.get(name="lab1")
    assert server.host_key_pinned

    # Validate, and follow the job live.
    page.get_by_role("button", name="Validate").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    page.wait_for_function(
        "() => { const b = document.querySelector('[data-testid=\"job-status\"]');"
        " return b && ['succeeded','failed','canceled','interrupted'].includes(b.textContent.trim()); }",
        timeout=90_000,
    )
    status = page.get_by_test_id("job-status").inner_text().strip()
    log_text = page.get_by_test_id("job-log").inner_text()
    page.screenshot(path="/tmp/panel-job.png", full_page=True)
    assert status == "succeeded", f"{status}: {log_text}"
    assert "Docker engine" in log_text

    # Lines reached the page while the job was still running, and some came over the websocket.
    arrivals = page.evaluate("window.__lineArrivals")
    assert arrivals and arrivals[0]["status"] not in TERMINAL, arrivals
    line_frames = [at for at, frame in frames if frame.get("type") == "lines"]
    end_frames = [at for at, frame in frames if frame.get("type") == "status" and frame.get("status") in TERMINAL]
    assert line_frames and end_frames, frames
    assert line_frames[0] < end_frames[0]
    seqs = [int(s) for s in page.locator("[data-joblog-output] .line").evaluate_all("ns => ns.map(n => n.dataset.seq)")]
    assert seqs == list(range(1, len(seqs) + 1)), "lines missing or repeated"
    # The steps and duration are reloaded by htmx when the job ends, and a finished job offers no Cancel.
    page.wait_for_selector("#job-summary .steps li")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)

    # The server page now shows the facts the validation found.
    page.get_by_test_id("job-server").click()
    page.wait_for_url(re.compile(r"/servers/\d+/$"))
    server.refresh_from_db()
    assert server.status == "ok"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", server.docker_version)
    assert page.get_by_test_id("docker-version").inner_text().strip() == server.docker_version
    assert page.get_by_test_id("server-status").inner_text().strip() == "Ready"
    page.screenshot(path="/tmp/panel-server.png", full_page=True)


@pytest.mark.browser
def test_it_renders_ansi_colours_and_never_log_text_as_html(live_server_url: str, owner: Any, browser: Browser) -> None:
    from panel.accounts.models import Organization
    from panel.jobs.models import Job, JobLogLine

    job = Job.objects.create(
        kind="validate_server",
        organization=Organization.objects.get(slug="lab-hosting"),
        status="failed",
        reason="Docker did not answer",
        last_seq=3,
    )
    texts = ["\x1b[1;32mok\x1b[0m plain", "<img src=x onerror=window.__pwned=1>\x1b[31mred", "still red\x1b[0m\x1b[2K"]
    for seq, text in enumerate(texts, start=1):
        JobLogLine.objects.create(job=job, seq=seq, text=text)
    page = browser.new_page()
    log_in(page, live_server_url, "lab-owner")
    page.goto(f"{live_server_url}/jobs/{job.pk}/")
    page.wait_for_selector("[data-joblog-output] .line[data-seq='3']")
    output = page.locator("[data-joblog-output]")
    assert output.locator(".ansi-green.ansi-bold").inner_text() == "ok"
    assert output.locator(".line[data-seq='2'] .ansi-red").inner_text() == "red"
    assert output.locator(".line[data-seq='3'] .ansi-red").inner_text() == "still red"
    assert output.locator("img").count() == 0
    assert "<img src=x onerror=window.__pwned=1>" in output.inner_text()
    assert "\x1b" not in output.inner_text()
    assert page.evaluate("window.__pwned") is None
    assert page.get_by_test_id("job-reason").inner_text() == "Docker did not answer"
