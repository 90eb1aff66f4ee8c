"""Access is re-checked on open sockets: a job's live log closes within seconds of the user losing access to it
or logging out (through the real HTTP logout), while other viewers keep following it to the end."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest
import requests
import websockets
from django.conf import settings

from panel.accounts.models import Membership
from panel.accounts.services import change_role, remove_member
from panel.jobs.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from panel.jobs.models import Job
from panel.jobs.services import create_job
from tests.lab_helpers import wait_job
from tests.ws_helpers import (
    in_thread,
    lines_of,
    read_until,
    session_cookie,
    status_of,
    statuses_of,
    wait_closed,
    ws_url,
)

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = pytest.mark.django_db(transaction=True)


def close_bound() -> float:
    """A socket must be closed this soon after its access went away."""
    return settings.JOB_WS_ACCESS_CHECK_SECONDS + 2


def long_job(orgs: dict[str, Any]) -> Job:
    # Streams a line every 50 ms for about 12 s: long enough for a check or two, short enough to wait for.
    return create_job(kind="test_emit", organization=orgs["a"], params={"count": 240, "delay": 0.05})


def follow_while(base: str, job: Job, doomed_cookie: str, bystander_cookie: str, revoke: Any) -> dict[str, Any]:
    """Open a doomed and a bystander socket, ``revoke`` the doomed one's access once lines flow, and watch both."""

    async def run() -> dict[str, Any]:
        doomed_headers = {"Cookie": doomed_cookie, "Origin": base}
        bystander_headers = {"Cookie": bystander_cookie, "Origin": base}
        async with (
            websockets.connect(ws_url(base, job.pk), additional_headers=doomed_headers) as doomed,
            websockets.connect(ws_url(base, job.pk), additional_headers=bystander_headers) as bystander,
        ):
            await read_until(doomed, lambda f, fs: len(lines_of(fs)) >= 5)
            await asyncio.to_thread(in_thread, revoke)
            code, _, took = await wait_closed(doomed, timeout=close_bound() + 10)
            status_at_close = await asyncio.to_thread(in_thread, status_of, job.pk)
            rest = await read_until(bystander, lambda f, fs: f["type"] == "status" and f["status"] != "running", 60)
            return {"code": code, "took": took, "status_at_close": status_at_close, "bystander": rest}

    return asyncio.run(run())


@pytest.mark.parametrize("change", ["removed", "demoted-to-customer"])
def test_it_closes_a_socket_soon_after_the_user_loses_access(
    change: str, jobs_worker: Any, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    olga = users["olga"]
    membership = Membership.objects.get(user=olga, organization=orgs["a"])
    job = long_job(orgs)

    def revoke() -> None:
        if change == "removed":
            remove_member(actor=users["alice"], membership=membership)
        else:
            change_role(actor=users["alice"], membership=membership, role="customer")

    seen = follow_while(live_server_url, job, session_cookie(olga), session_cookie(users["alice"]), revoke)
    assert seen["code"] == CLOSE_FORBIDDEN
    assert seen["took"] <= close_bound(), f"closed {seen['took']:.1f}s after the change"
    job = wait_job(job, timeout=30)
    assert job.status == "succeeded"
    assert seen["status_at_close"] == "running", "closed while the job still streamed, not when it ended"
    # Someone who keeps access follows the job to its end on the same group.
    assert statuses_of(seen["bystander"])[-1] == "succeeded"


def log_out_over_http(base: str, cookie: str) -> None:
    """Log out as a person does: the page's logout form, POSTed with that session's cookie and CSRF token."""
    http = requests.Session()
    name, value = cookie.split("=", 1)
    http.cookies.set(name, value, domain="127.0.0.1")
    page = http.get(f"{base}/jobs/", timeout=10)
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, "the page has a logout form"
    answer = http.post(
        f"{base}/logout/",
        data={"csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base}/jobs/"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.status_code
    assert http.get(f"{base}/jobs/", allow_redirects=False, timeout=10).status_code == 302, "signed out"


def test_it_closes_a_socket_soon_after_its_session_logs_out(
    jobs_worker: Any, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    cookie = session_cookie(users["alice"])
    job = long_job(orgs)
    seen = follow_while(
        live_server_url, job, cookie, session_cookie(users["alice"]), lambda: log_out_over_http(live_server_url, cookie)
    )
    assert seen["code"] == CLOSE_UNAUTHENTICATED
    assert seen["took"] <= close_bound(), f"closed {seen['took']:.1f}s after the logout"
    job = wait_job(job, timeout=30)
    assert seen["status_at_close"] == "running", "closed while the job still streamed, not when it ended"
    # The user's other session (another browser) is not the one that logged out: it keeps following.
    assert statuses_of(seen["bystander"])[-1] == "succeeded"


def test_it_closes_a_socket_of_a_finished_job_when_the_user_is_deactivated(
    live_server_url: str, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    """A finished job's socket sends nothing more, yet it is still closed when its user may no longer use it."""
    job = Job.objects.create(kind="test_emit", organization=orgs["a"], status="succeeded")
    headers = {"Cookie": session_cookie(users["victor"]), "Origin": live_server_url}

    async def run() -> tuple[int | None, float]:
        async with websockets.connect(ws_url(live_server_url, job.pk), additional_headers=headers) as socket:
            await read_until(socket, lambda f, fs: f["type"] == "status")
            victor = type(users["victor"]).objects.filter(pk=users["victor"].pk)
            await asyncio.to_thread(in_thread, victor.update, is_active=False)
            code, _, took = await wait_closed(socket, timeout=close_bound() + 10)
            return code, took

    code, took = asyncio.run(run())
    assert code == CLOSE_UNAUTHENTICATED
    assert took <= close_bound()


@pytest.mark.browser
def test_it_tells_the_page_it_was_signed_out_and_does_not_reconnect(
    jobs_worker: Any, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any], browser: Any
) -> None:
    cookie = session_cookie(users["alice"])
    job = long_job(orgs)
    context = browser.new_context()
    context.add_cookies([{"name": "sessionid", "value": cookie.split("=", 1)[1], "url": live_server_url}])
    page = context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(f"{live_server_url}/jobs/{job.pk}/")
    page.wait_for_function("() => document.querySelectorAll('[data-joblog-output] .line').length >= 5")
    log_out_over_http(live_server_url, cookie)
    connection = page.locator("[data-joblog-connection]")
    connection.filter(has_text="signed out").wait_for(timeout=close_bound() * 1000)
    shown = page.locator("[data-joblog-output] .line").count()
    page.wait_for_timeout(3000)
    assert len(sockets) == 1, "a signed-out page does not open the socket again"
    assert page.locator("[data-joblog-output] .line").count() == shown, "and receives nothing more"
    assert wait_job(job, timeout=30).status == "succeeded"
