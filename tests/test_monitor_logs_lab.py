"""Live container logs against the lab (must show "Live logs"): real uvicorn processes, real websocket clients, the
stand-in environment's containers on lab1, its ``docker logs`` processes seen with ``ps`` on the host."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.conf import settings
from django.test import Client

from panel.accounts.models import Membership
from tests.conftest import ManagedProcess, free_port, wait_for_port
from tests.monitoring_fixtures import RunningEnv
from tests.ws_helpers import in_thread, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)
# Playwright's sync API runs an event loop in this thread; the ORM calls of the fixtures are still synchronous.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


@pytest.fixture(scope="module")
def second_server(django_db_setup: Any, process_logs: Path) -> Iterator[str]:
    """A second ASGI process (its own followers, its own SSH connections): viewers on both share one follower.
    It re-checks access every second, so a viewer who loses access is cut off quickly."""
    port = free_port()
    proc = ManagedProcess(
        "uvicorn-logs",
        [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        process_logs / "uvicorn-logs.log",
        env={"JOB_WS_ACCESS_CHECK_SECONDS": "1"},
    )  # fmt: skip
    proc.start()
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def ws_url(base: str, environment_id: int, service: str, after: str = "") -> str:
    url = base.replace("http://", "ws://") + f"/ws/environments/{environment_id}/logs/{service}/"
    return url + (f"?after={after}" if after else "")


def print_marks(env: RunningEnv, run: str, first: int, last: int) -> None:
    """Lines ``<run>-<n>`` on the odoo container's stdout, as fast as a shell loop writes them."""
    script = 'for i in $(seq "$1" "$2"); do printf "%s-%s \\033[32mgreen\\033[0m\\n" "$3" "$i" >/proc/1/fd/1; done'
    result = env.stack.exec("odoo", "sh", "-c", script, "sh", str(first), str(last), run)
    assert result.returncode == 0, result.stderr


def followers_on_host(env: RunningEnv, container: str) -> int:
    """``docker logs --follow`` processes of ``container`` running on the lab host (checked there with ps)."""
    result = env.host.ssh("ps", "-eo", "args", "--no-headers")
    return sum(1 for line in result.stdout.splitlines() if line.startswith("docker logs") and container in line)


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.2)


class Viewer:
    """One websocket client of a service's log, collecting the marked lines of one run in arrival order."""

    def __init__(self, socket: Any, run: str) -> None:
        self.socket = socket
        self.run = run
        self.marks: list[int] = []
        self.last_id = ""
        self.stamps: dict[int, str] = {}
        self.texts: list[str] = []
        self.numbers: list[int] = []  # every line's n, marked or not

    async def until(self, last_mark: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.marks or self.marks[-1] < last_mark:
            left = deadline - time.monotonic()
            assert left > 0, f"got marks up to {self.marks[-1:]} of {last_mark}"
            frame = json.loads(await asyncio.wait_for(self.socket.recv(), timeout=left))
            assert frame["type"] == "lines"
            for line in frame["lines"]:
                self.last_id = line["id"]
                self.numbers.append(line["n"])
                head = line["text"].split(" ", 1)[0]
                if head.startswith(f"{self.run}-"):
                    mark = int(head.rpartition("-")[2])
                    self.marks.append(mark)
                    self.stamps[mark] = line["ts"]
                    self.texts.append(line["text"])


def test_it_follows_a_service_once_for_all_viewers_and_resumes_without_loss_or_duplicates(
    running_env: RunningEnv, live_server_url: str, second_server: str, users: dict[str, Any]
) -> None:
    env = running_env
    environment = env.environment
    container = env.host.docker("inspect", "--format", "{{.Id}}", env.container("odoo")).stdout.strip()
    run = f"mark{int(time.time())}"
    alice = {"Cookie": session_cookie(users["alice"]), "Origin": live_server_url}
    victor = {"Cookie": session_cookie(users["victor"]), "Origin": second_server}
    victor_membership = Membership.objects.get(user=users["victor"])

    page = Client()
    page.force_login(users["alice"])
    html = page.get(f"/environments/{environment.pk}/logs/").content.decode()
    assert f'data-ws-path="/ws/environments/{environment.pk}/logs/odoo/"' in html
    assert f"/environments/{environment.pk}/logs/db/" in html  # the other service, from its containers

    async def scenario() -> tuple[Viewer, Viewer, int]:
        url_a = ws_url(live_server_url, environment.pk, "odoo")
        url_b = ws_url(second_server, environment.pk, "odoo")
        async with websockets.connect(url_a, additional_headers=alice) as socket_a:
            async with websockets.connect(url_b, additional_headers=victor) as socket_b:
                a, b = Viewer(socket_a, run), Viewer(socket_b, run)
                await asyncio.to_thread(wait_for, lambda: followers_on_host(env, container) >= 1, "a follower")
                await asyncio.to_thread(print_marks, env, run, 1, 40)
                await asyncio.gather(a.until(40), b.until(40))
                # Two viewers, in two ASGI processes: one remote docker logs.
                followers = await asyncio.to_thread(followers_on_host, env, container)
                # Victor loses access: his socket closes within seconds (4403), Alice's stays.
                await asyncio.to_thread(in_thread, victor_membership.delete)
                started = time.monotonic()
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    while True:
                        await asyncio.wait_for(socket_b.recv(), timeout=10)
                assert socket_b.close_code == 4403 and time.monotonic() - started < 5
        return a, b, followers

    a, b, followers = asyncio.run(scenario())
    assert followers == 1
    assert a.marks == b.marks == list(range(1, 41))
    assert "\x1b[32mgreen\x1b[0m" in a.texts[0]  # the colours reach the browser, which renders them
    # The last viewer left: the remote process ends (no orphan on the host).
    wait_for(lambda: followers_on_host(env, container) == 0, "no docker logs left on the host")

    # Lines printed while nobody watched arrive after a reconnect from the last position, once each.
    print_marks(env, run, 41, 70)

    async def reconnect() -> Viewer:
        url = ws_url(live_server_url, environment.pk, "odoo", after=a.last_id)
        async with websockets.connect(url, additional_headers=alice) as socket:
            again = Viewer(socket, run)
            await again.until(70)
            await asyncio.to_thread(print_marks, env, run, 71, 90)
            await again.until(90)
            return again

    again = asyncio.run(reconnect())
    assert a.marks + again.marks == list(range(1, 91)), "every line once, in order, across the reconnect"
    numbers = a.numbers + again.numbers  # the stream's count runs on without a jump: the page sees no gap
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    wait_for(lambda: followers_on_host(env, container) == 0, "no docker logs left after the reconnect")

    # The download of a time range has exactly the lines of that range (the first forty).
    since = datetime.datetime.fromisoformat(a.stamps[1]) - datetime.timedelta(microseconds=500)
    until = datetime.datetime.fromisoformat(a.stamps[40]) + datetime.timedelta(microseconds=500)
    query = urllib.parse.urlencode({"since": since.isoformat(), "until": until.isoformat()})
    request = urllib.request.Request(
        f"{live_server_url}/environments/{environment.pk}/logs/odoo/download/?{query}", headers=alice
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Disposition"].startswith("attachment;")
        body = response.read().decode()
    marks = [line.split(" ")[1] for line in body.splitlines() if f" {run}-" in line]
    assert marks == [f"{run}-{n}" for n in range(1, 41)]
    assert settings.MONITOR_LOG_TAIL_LINES > 0


@pytest.mark.browser
def test_it_shows_live_lines_coloured_filtered_and_paused_in_the_browser(
    running_env: RunningEnv, live_server_url: str, users: dict[str, Any], browser: Any
) -> None:
    env = running_env
    run = f"page{int(time.time())}"
    context = browser.new_context()
    cookie = session_cookie(users["victor"]).partition("=")[2]
    context.add_cookies([{"name": "sessionid", "value": cookie, "url": live_server_url}])
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{live_server_url}/environments/{env.environment.pk}/")
    page.get_by_test_id("environment-logs").click()
    output = page.get_by_test_id("container-log")
    root = page.locator("[data-containerlog]")
    page.locator("[data-containerlog][data-last-id]").wait_for()  # the tail arrived (CSP: no eval in waits)
    print_marks(env, run, 1, 5)
    output.locator(".line", has_text=f"{run}-5 ").wait_for()
    assert output.locator(".line", has_text=f"{run}-1 ").locator(".ansi-green").inner_text() == "green"

    page.get_by_label("Filter shown lines").fill(f"{run}-3 ")
    assert output.locator(".line:visible").count() == 1
    page.get_by_label("Filter shown lines").fill("")

    page.get_by_role("button", name="Pause").click()
    before = root.get_attribute("data-last-id")
    print_marks(env, run, 6, 8)
    page.locator(f'[data-containerlog]:not([data-last-id="{before}"])').wait_for()  # lines arrived while paused...
    assert output.locator(".line", has_text=f"{run}-8 ").count() == 0  # ...and are not shown
    page.get_by_role("button", name="Resume").click()
    output.locator(".line", has_text=f"{run}-8 ").wait_for()
    texts = [text.split(" ")[0] for text in output.locator(".line .text").all_inner_texts()]
    assert [text for text in texts if text.startswith(f"{run}-")] == [f"{run}-{n}" for n in range(1, 9)]
    assert problems == []
    context.close()
