"""Playwright (Chromium) against uvicorn and the lab: the dashboard shows an environment going down and up again
without a reload, driven by real poll cycles of the running stand-in on lab1 (``running_env``); then the status
page's bar of today shows the outage, and the environment page's Health section draws it on its charts."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from monitoring import poller
from monitoring.models import EnvironmentHealth, HealthState, Sample
from panel.jobs.models import Job
from tests.conftest import PASSWORD
from tests.monitoring_fixtures import RunningEnv

pytestmark = [pytest.mark.browser, pytest.mark.lab]


def log_in(page: Page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/dashboard/")


def cycle_until(running_env: RunningEnv, done: Any, cycles: int = 3) -> EnvironmentHealth:
    """Run poll cycles of the environment's server (as the monitoring worker does) until ``done(health)``; fails
    after ``cycles`` cycles."""
    health = None
    for _ in range(cycles):
        report = poller.poll_server(running_env.server.pk)
        assert not report.skipped
        health = EnvironmentHealth.objects.filter(environment=running_env.environment).first()
        if health is not None and done(health):
            return health
    raise AssertionError(f"not there after {cycles} cycles: {health.state if health else None}")


def answering(health: EnvironmentHealth) -> bool:
    # The stand-in answers on 8069; a check such as the backup's age may keep it degraded rather than up.
    return health.state in (HealthState.UP, HealthState.DEGRADED)


def test_it_shows_an_environment_going_down_and_up_on_the_dashboard_without_a_reload(
    live_server_url: str, transactional_db: Any, running_env: RunningEnv, browser: Browser
) -> None:
    environment = running_env.environment
    before = cycle_until(running_env, answering)
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    log_in(page, live_server_url, "alice")
    row = page.get_by_test_id(f"dashboard-env-{environment.pk}")
    badge = row.get_by_test_id("health-state")
    expect(badge).to_have_text(before.get_state_display())
    expect(page.locator("[data-health-live]")).to_have_attribute("data-health-connected", "true")
    page.evaluate("window.__sameDocument = true")  # a reload would lose this

    running_env.stop_odoo()
    try:
        cycle_until(running_env, lambda health: health.state == HealthState.DOWN)
        expect(badge).to_have_text("Down", timeout=10_000)
        expect(row.locator('[data-field="message"]')).not_to_be_empty()  # why, as the poller words it
        expect(page.get_by_test_id("dashboard-summary")).to_have_text("1 environment with problems.")
        # Down for three cycles in all (MONITOR_INTERVAL each): what the status page's bar counts.
        for _ in range(2):
            assert poller.poll_server(running_env.server.pk).skipped is False
        assert EnvironmentHealth.objects.get(environment=environment).state == HealthState.DOWN
    finally:
        running_env.start_odoo()
    after = cycle_until(running_env, answering)
    expect(badge).to_have_text(after.get_state_display(), timeout=10_000)
    expect(badge).not_to_have_text("Down")
    assert page.evaluate("window.__sameDocument === true"), "the page was not reloaded"

    # The organization's status page: today's uptime bar shows the outage (three down samples, 30 s apart).
    page.goto(f"{live_server_url}/status/{environment.project.organization_id}/")
    card = page.locator(f'[data-testid="status-env"][data-environment="{environment.pk}"]')
    today = card.locator(".status-bar").last
    expect(today).to_have_attribute("data-down-minutes", re.compile(r"^[1-9][0-9]*$"))
    assert "min down" in (today.get_attribute("title") or "")

    # The environment page: the Health section, live, with the outage on its uPlot charts and a deploy marked.
    Job.objects.create(
        organization=environment.project.organization, kind="deploy", status="succeeded", environment=environment,
        started_at=timezone.now(), finished_at=timezone.now(),
    )  # fmt: skip
    page.goto(f"{live_server_url}/environments/{environment.pk}/")
    section = page.get_by_test_id("health-section")
    expect(section).to_have_attribute("data-health-connected", "true")
    expect(section.get_by_test_id("health-state")).to_have_text(after.get_state_display())
    for chart in ("chart-uptime", "chart-http", "chart-resources"):
        expect(page.get_by_test_id(chart).locator("canvas")).to_be_visible()
    samples = Sample.objects.filter(environment=environment).count()
    expect(page.get_by_test_id("chart-uptime")).to_have_attribute("data-points", str(samples))
    expect(page.get_by_test_id("chart-uptime")).to_have_attribute("data-events", "1")
    page.get_by_role("button", name="7 d").click()
    expect(page.locator("[data-health-charts]")).to_have_attribute("data-loaded-range", "7d")
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
