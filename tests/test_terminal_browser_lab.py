"""Playwright (Chromium) against uvicorn and the lab (must show "Terminal, Playwright" and "Recording"): a shell on
the stand-in environment of lab1 computes 42, resizing the window changes ``stty size``, closing the tab leaves no
process of the session on the host; the psql profile runs ``select 1``; the owner replays the recorded session and
finds it in the audit log."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from playwright.sync_api import Browser, Page, expect

from panel.accounts.models import AuditEvent
from terminal.models import TerminalSession
from terminal.services import recording_path
from tests.conftest import PASSWORD
from tests.monitoring_fixtures import RunningEnv
from tests.test_terminal_lab import session_processes, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.lab]

SCREEN_TEXT = """() => { const b = window.panelTerminal.buffer.active; const rows = [];
  for (let i = 0; i < b.length; i++) rows.push(b.getLine(i).translateToString(true)); return rows.join("\\n"); }"""


def log_in(page: Page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/dashboard/")


def screen_text(page: Page) -> str:
    return str(page.evaluate(SCREEN_TEXT))


def wait_screen(page: Page, needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = screen_text(page)
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"{needle!r} not on the screen: {text[-600:]!r}"
        page.wait_for_timeout(100)


def open_terminal(page: Page, base_url: str, environment: Any, profile: str) -> None:
    page.goto(f"{base_url}/environments/{environment.pk}/")
    page.get_by_test_id("environment-terminal").click()
    page.get_by_test_id("terminal-profile").select_option(profile)
    page.get_by_test_id("terminal-confirm").check()  # a production environment
    page.get_by_test_id("terminal-open").click()
    expect(page.get_by_test_id("terminal-status")).to_have_text("Connected", timeout=20_000)


def test_a_shell_in_the_browser_computes_resizes_closes_without_orphans_and_replays(
    live_server_url: str, transactional_db: Any, running_env: RunningEnv, browser: Browser
) -> None:
    env = running_env
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    log_in(page, live_server_url, "alice")
    open_terminal(page, live_server_url, env.environment, "shell")
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type("echo $((6*7))")
    page.keyboard.press("Enter")
    wait_screen(page, "\n42")
    page.keyboard.type("stty size")
    page.keyboard.press("Enter")
    cols, rows = page.evaluate("[window.panelTerminal.cols, window.panelTerminal.rows]")
    wait_screen(page, f"{rows} {cols}")
    page.set_viewport_size({"width": 800, "height": 600})
    page.wait_for_function(f"window.panelTerminal.cols < {cols}")
    page.wait_for_timeout(300)
    new_cols, new_rows = page.evaluate("[window.panelTerminal.cols, window.panelTerminal.rows]")
    # The resize reaches the container asynchronously (sshd -> SIGWINCH -> the docker client -> the engine), so ask
    # again until the new size shows.
    deadline = time.monotonic() + 15
    while True:
        page.keyboard.type("clear; stty size")
        page.keyboard.press("Enter")
        try:
            wait_screen(page, f"{new_rows} {new_cols}", timeout=1)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    assert (new_cols, new_rows) != (cols, rows)
    assert session_processes(env)  # running now, on the host and in the container
    page.close()  # closing the tab: the socket goes, the session's processes end
    wait_for(lambda: session_processes(env) == [], "no process of the session left on the host")

    page = context.new_page()
    open_terminal(page, live_server_url, env.environment, "psql")
    page.locator(".xterm-helper-textarea").focus()
    wait_screen(page, f"{env.database}=#")
    page.keyboard.type("select 1;")
    page.keyboard.press("Enter")
    wait_screen(page, "(1 row)")
    page.get_by_test_id("terminal-close").click()
    wait_for(lambda: session_processes(env) == [], "no process of the psql session left")

    # Recording: the shell session replays in the browser, and it is in the audit log.
    wait_for(lambda: TerminalSession.objects.filter(ended_at__isnull=False).count() == 2, "both sessions ended")
    shell = TerminalSession.objects.get(profile="shell")
    page.goto(f"{live_server_url}/terminal/sessions/")
    page.locator(f'[data-session="{shell.pk}"]').get_by_test_id("terminal-replay-link").click()
    player = page.get_by_test_id("terminal-replay")
    # The recording ends on the cleared screen that shows the last size (the player plays it at double speed).
    expect(player.locator(".ap-term-text")).to_contain_text(f"{new_rows} {new_cols}", timeout=20_000)
    assert "42" in recording_path(shell).read_text()  # type: ignore[union-attr]
    page.goto(f"{live_server_url}/audit/")
    expect(page.locator("body")).to_contain_text("terminal.started")
    assert AuditEvent.objects.filter(
        action="terminal.started", detail__session=shell.pk, actor__username="alice"
    ).exists()
    assert not [p for p in problems if ".map" not in p and "inline style" not in p], problems
    context.close()
