"""Deploying the lab's sample project from the environment page in a real browser, following steps and log live.

Runs against uvicorn (HTTP + websockets), a real Celery worker and the lab host ``lab1``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from playwright.sync_api import Browser, Page

from tests.conftest import PASSWORD

TERMINAL = ("succeeded", "failed", "canceled", "interrupted")

# Records, in the page, every change of the steps list and each log line's arrival, with the job status shown then.
RECORD = """
window.__stepSnapshots = [];
window.__lineArrivals = [];
new MutationObserver(() => {
  const badge = document.querySelector('[data-testid="job-status"]');
  const status = badge ? badge.textContent.trim() : '';
  const steps = Array.from(document.querySelectorAll('[data-job-steps] [data-step-status]'))
    .map(node => node.dataset.stepStatus);
  const lastSteps = window.__stepSnapshots[window.__stepSnapshots.length - 1];
  if (steps.length && (!lastSteps || lastSteps.steps.join() !== steps.join())) {
    window.__stepSnapshots.push({steps: steps, status: status});
  }
  const output = document.querySelector('[data-joblog-output]');
  const count = output ? output.querySelectorAll('.line').length : 0;
  const lastLine = window.__lineArrivals[window.__lineArrivals.length - 1];
  if (count && (!lastLine || lastLine.count !== count)) {
    window.__lineArrivals.push({count: count, status: status});
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""


def log_in(page: Page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/(dashboard|projects)/$"))


@pytest.mark.browser
@pytest.mark.lab
def test_it_deploys_from_the_environment_page_with_live_steps_and_log(
    live_server_url: str, deploy_env: Any, users: Any, browser: Browser
) -> None:
    from deployments.models import Deployment

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.add_init_script(RECORD)
    log_in(page, live_server_url, "alice")

    page.goto(f"{live_server_url}/environments/{deploy_env.pk}/")
    assert page.get_by_test_id("environment-state").inner_text().strip() == "not deployed"
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.wait_for_url(re.compile(r"/deployments/\d+/$"))
    deployment = Deployment.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    assert deployment.environment_id == deploy_env.pk

    page.wait_for_function(
        "() => { const b = document.querySelector('[data-testid=\"job-status\"]');"
        " return b && ['succeeded','failed','canceled','interrupted'].includes(b.textContent.trim()); }",
        timeout=480_000,
    )
    # The summary (status, commit, images) is reloaded when the job ends.
    page.wait_for_selector("[data-testid='deployment-status']:text('succeeded')", timeout=30_000)
    page.screenshot(path="/tmp/panel-deploy.png", full_page=True)
    deployment.refresh_from_db()
    status = page.get_by_test_id("job-status").inner_text().strip()
    assert status == "succeeded", f"{status}: {page.get_by_test_id('job-log').inner_text()[-3000:]}"

    # Log lines reached the page while the job was still running.
    arrivals = page.evaluate("window.__lineArrivals")
    assert arrivals and arrivals[0]["status"] not in TERMINAL, arrivals
    # Steps turned green one by one: some snapshot shows a succeeded step followed by a running one, while the job
    # still ran; at the end all eight are green.
    snapshots = page.evaluate("window.__stepSnapshots")
    live = [s for s in snapshots if s["status"] not in TERMINAL]
    assert any(
        "succeeded" in s["steps"]
        and s["steps"][-1] == "running"
        and s["steps"].index("succeeded") < len(s["steps"]) - 1
        for s in live
    ), snapshots
    assert len({len(s["steps"]) for s in live}) >= 3, snapshots
    final = page.locator("[data-job-steps] [data-step-status]").evaluate_all("ns => ns.map(n => n.dataset.stepStatus)")
    assert final == ["succeeded"] * 8, final
    assert deployment.commit in page.get_by_test_id("deployment-commit").inner_text()
    assert page.get_by_role("link", name="Download log").is_visible()
    assert page.get_by_role("button", name="Cancel").count() == 0

    # The environment page shows the new deployment as running, and in its history with its commit.
    page.goto(f"{live_server_url}/environments/{deploy_env.pk}/")
    assert page.get_by_test_id("environment-state").inner_text().strip() == f"running {deployment.short_commit}"
    row = page.locator(f"[data-testid='deployment-history'] tr[data-deployment='{deployment.pk}']")
    assert deployment.short_commit in row.inner_text()
    assert "succeeded" in row.inner_text()
    page.screenshot(path="/tmp/panel-deploy-environment.png", full_page=True)
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
