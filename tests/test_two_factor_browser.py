"""Two-factor login in a real browser (headless Chromium through Playwright) and against the real uvicorn:
a login with a TOTP code, the enrolment an organization forces on its staff, and a half-done login that reaches
neither the API nor the websockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from typing import Any

import pytest
import requests
import websockets

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from django_otp.oath import TOTP
from playwright.sync_api import Browser, Page

from panel.accounts import two_factor
from panel.accounts.models import AuditEvent, Organization, TotpDevice
from panel.jobs.choices import JobStatus
from panel.jobs.models import Job, JobLogLine
from tests.conftest import PASSWORD
from tests.test_two_factor import enroll, totp_code
from tests.ws_helpers import in_thread


@pytest.fixture
def hosting(transactional_db: Any) -> Organization:
    return Organization.objects.create(name="Lab Hosting", slug="lab-hosting")


def watch_for_problems(page: Page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def password_step(page: Page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


@pytest.mark.browser
def test_it_logs_in_with_a_totp_code_in_the_browser(
    live_server_url: str, hosting: Organization, make_user: Any, browser: Browser
) -> None:
    user = make_user("lab-owner", hosting, "owner")
    device, _ = enroll(user)
    page = browser.new_page()
    problems = watch_for_problems(page)
    password_step(page, live_server_url, "lab-owner")
    page.wait_for_url(f"{live_server_url}/login/code/")
    assert page.get_by_role("heading", name="Two-factor login").is_visible()
    # Not signed in yet: another page sends the browser back to the login.
    page.goto(f"{live_server_url}/servers/")
    assert page.url.startswith(f"{live_server_url}/login/")
    page.goto(f"{live_server_url}/login/code/")
    page.locator("#id_code").fill("000000" if totp_code(device, 1) != "000000" else "111111")
    page.get_by_role("button", name="Verify").click()
    assert page.get_by_text("That code is not right").is_visible()
    page.locator("#id_code").fill(totp_code(device, 1))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"{live_server_url}/dashboard/")
    assert page.get_by_role("button", name="Add server").is_visible()
    assert AuditEvent.objects.filter(action="two_factor.failed", actor_name="lab-owner").count() == 1
    assert AuditEvent.objects.filter(action="login.succeeded", actor=user).count() == 1
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems


@pytest.mark.browser
def test_it_makes_required_staff_enroll_in_the_browser_and_leaves_customers_alone(
    live_server_url: str, hosting: Organization, make_user: Any, browser: Browser
) -> None:
    Organization.objects.filter(pk=hosting.pk).update(require_two_factor=True)
    make_user("lab-operator", hosting, "operator")
    customer_org = Organization.objects.create(name="Lab Customer", slug="lab-customer", managed_by=hosting)
    make_user("lab-customer", customer_org, "customer")

    page = browser.new_page()
    problems = watch_for_problems(page)
    password_step(page, live_server_url, "lab-operator")
    page.wait_for_url(f"{live_server_url}/account/two-factor/enroll/")
    assert page.get_by_text("Required by Lab Hosting").is_visible()
    assert page.locator("[data-testid=totp-qr] svg").is_visible()
    page.get_by_text("Can't scan it?").click()
    secret = page.locator("[data-testid=totp-secret]").inner_text().replace(" ", "")
    assert page.locator("[data-testid=otpauth-uri]").inner_text().startswith("otpauth://totp/")
    # Nothing else is reachable before the enrolment is done.
    page.goto(f"{live_server_url}/projects/")
    assert page.url.startswith(f"{live_server_url}/login/")
    page.goto(f"{live_server_url}/account/two-factor/enroll/")
    # The authenticator app, as a person's phone would run it, from the key typed in.
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    page.locator("#id_code").fill(f"{TOTP(key).token():06d}")
    page.get_by_role("button", name="Turn on two-factor login").click()
    codes = page.locator("[data-testid=recovery-codes] li")
    codes.first.wait_for()
    assert codes.count() == 10
    assert re.fullmatch(r"[a-z0-9]{4}(-[a-z0-9]{4}){3}", codes.first.inner_text().strip())
    page.get_by_role("button", name="I saved them, continue").click()
    page.wait_for_url(f"{live_server_url}/dashboard/")
    assert TotpDevice.objects.get(user__username="lab-operator").confirmed
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems

    customer = browser.new_page()
    password_step(customer, live_server_url, "lab-customer")
    customer.wait_for_url(f"{live_server_url}/projects/")


def ws_frames(base_url: str, job_id: int, cookie: str) -> list[dict[str, Any]]:
    """Every frame a websocket on the job's log receives until it closes (or goes quiet for 5 s)."""

    async def read() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        url = base_url.replace("http://", "ws://") + f"/ws/jobs/{job_id}/?after=0"
        headers = {"Origin": base_url, "Cookie": cookie}
        try:
            async with websockets.connect(url, additional_headers=headers) as socket:
                while True:
                    frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=5))
                    frames.append(frame)
                    if frame.get("type") == "status":
                        return frames
        except (websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed, TimeoutError):
            return frames

    return asyncio.run(read())


def test_it_keeps_a_half_logged_in_session_off_the_api_and_the_websockets(
    live_server_url: str, hosting: Organization, make_user: Any
) -> None:
    user = make_user("lab-owner", hosting, "owner")
    device, _ = enroll(user)
    job = Job.objects.create(kind="test_emit", organization=hosting, status=JobStatus.SUCCEEDED, last_seq=1)
    JobLogLine.objects.create(job=job, seq=1, text="output of the job")

    browser = requests.Session()
    form = browser.get(f"{live_server_url}/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token is not None
    response = browser.post(
        f"{live_server_url}/login/",
        data={"csrfmiddlewaretoken": token.group(1), "username": "lab-owner", "password": PASSWORD},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302 and response.headers["Location"] == "/login/code/"
    cookie = f"sessionid={browser.cookies['sessionid']}"

    # Password right, code not given yet: no API data, no log lines.
    for path in ("/api/v1/jobs/", f"/api/v1/jobs/{job.pk}/lines/", "/api/v1/tokens/"):
        response = browser.get(f"{live_server_url}{path}", timeout=10)
        assert response.status_code in (401, 403), path
        assert "output of the job" not in response.text
    assert ws_frames(live_server_url, job.pk, cookie) == []

    # With the code, the same session reaches both.
    page = browser.get(f"{live_server_url}/login/code/", timeout=10).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    response = browser.post(
        f"{live_server_url}/login/code/",
        data={"csrfmiddlewaretoken": token.group(1), "code": totp_code(device, 1)},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302
    cookie = f"sessionid={browser.cookies['sessionid']}"
    assert browser.get(f"{live_server_url}/api/v1/jobs/{job.pk}/lines/", timeout=10).json()["lines"][0]["text"] == (
        "output of the job"
    )
    frames = ws_frames(live_server_url, job.pk, cookie)
    assert [line["text"] for f in frames if f["type"] == "lines" for line in f["lines"]] == ["output of the job"]
    assert two_factor.is_fully_authenticated(user, {two_factor.VERIFIED_SESSION_KEY: device.persistent_id})


def test_it_closes_the_websockets_of_staff_who_owe_a_second_factor(
    live_server_url: str, hosting: Organization, make_user: Any
) -> None:
    from django.test import Client

    make_user("lab-operator", hosting, "operator")
    job = Job.objects.create(kind="test_emit", organization=hosting, status=JobStatus.RUNNING, last_seq=1)
    JobLogLine.objects.create(job=job, seq=1, text="output of the job")
    signed_in = Client()
    assert signed_in.post("/login/", {"username": "lab-operator", "password": PASSWORD}).status_code == 302
    cookie = f"sessionid={signed_in.cookies['sessionid'].value}"
    url = live_server_url.replace("http://", "ws://") + f"/ws/jobs/{job.pk}/?after=0"
    headers = {"Origin": live_server_url, "Cookie": cookie}

    async def follow_until_closed() -> tuple[list[str], float]:
        texts: list[str] = []
        async with websockets.connect(url, additional_headers=headers) as socket:
            frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
            texts += [line["text"] for line in frame.get("lines", [])]
            # The owner switches the requirement on while the socket is open.
            await asyncio.to_thread(
                in_thread, lambda: Organization.objects.filter(pk=hosting.pk).update(require_two_factor=True)
            )
            switched = asyncio.get_running_loop().time()
            try:
                while True:
                    await asyncio.wait_for(socket.recv(), timeout=30)
            except websockets.exceptions.ConnectionClosed:
                return texts, asyncio.get_running_loop().time() - switched

    texts, seconds = asyncio.run(follow_until_closed())
    assert texts == ["output of the job"]
    assert seconds < 15
    # And a new socket of that session is refused before any data.
    assert ws_frames(live_server_url, job.pk, cookie) == []
