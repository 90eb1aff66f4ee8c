"""The terminal against the lab, through uvicorn and a real websocket client (must show "Terminal refusals"; the
session's end and its recording): the stand-in environment on lab1 (``running_env``), its processes seen on the
host (``ps`` over SSH) and in its containers (``/proc/*/environ`` through ``docker exec``)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.test import Client

from panel.accounts.models import AuditEvent, Membership
from panel.inventory.models import Environment, Project
from terminal.models import TerminalSession
from terminal.services import recording_path
from tests.conftest import ManagedProcess, free_port, wait_for_port
from tests.lab_helpers import add_lab_server
from tests.monitoring_fixtures import RunningEnv
from tests.ws_helpers import session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lab]
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

MARK = "DOODBA_PANEL_TERMINAL="


@pytest.fixture(scope="module")
def short_server(django_db_setup: Any, process_logs: Path) -> Iterator[str]:
    """An ASGI process whose sessions end after 2 s without a keystroke and last 6 s at most."""
    port = free_port()
    proc = ManagedProcess(
        "uvicorn-terminal",
        [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        process_logs / "uvicorn-terminal.log",
        env={"TERMINAL_IDLE_SECONDS": "2", "TERMINAL_MAX_SECONDS": "6", "TERMINAL_OPEN_SECONDS": "2"},
    )  # fmt: skip
    proc.start()
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def session_processes(env: RunningEnv) -> list[str]:
    """Every process of any terminal session: docker clients on the lab host (their arguments carry the tag, seen
    with ps over SSH) and processes in the environment's containers (the tag in their environment)."""
    found = [line for line in env.host.ssh("ps", "-eo", "pid,args", "--no-headers").stdout.splitlines() if MARK in line]
    script = f'for d in /proc/[0-9]*; do tr "\\0" "\\n" < $d/environ 2>/dev/null | grep -q "^{MARK}" && echo "$d"; done'
    for service in ("odoo", "db"):
        result = env.stack.exec(service, "sh", "-c", script)
        found += [f"{service}:{line}" for line in result.stdout.split()]
    return found


def ticket(user: Any, environment: Any, profile: str = "shell") -> str:
    client = Client()
    client.force_login(user)
    answer = client.post(f"/environments/{environment.pk}/terminal/ticket/", {"profile": profile, "confirm": "yes"})
    assert answer.status_code == 200, answer.content
    return str(answer.json()["ticket"])


def url(base: str, environment: Any) -> str:
    return base.replace("http://", "ws://") + f"/ws/environments/{environment.pk}/terminal/"


async def refused(base: str, environment: Any, headers: dict[str, str], token: Any) -> tuple[int | None, str]:
    """Connect, send the open message, return (close code, reason of the end message) once the server closes."""
    reason = ""
    async with websockets.connect(url(base, environment), additional_headers=headers) as socket:
        await socket.send(json.dumps({"type": "open", "ticket": token, "cols": 80, "rows": 24}))
        try:
            while True:
                frame = await asyncio.wait_for(socket.recv(), timeout=10)
                assert isinstance(frame, str), "output reached a refused socket"
                reason = json.loads(frame).get("reason", reason)
        except websockets.exceptions.ConnectionClosed:
            pass
        return socket.close_code, reason


class Screen:
    """A terminal socket's output, decoded, with a wait for text to appear."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.text = ""
        self.messages: list[dict[str, Any]] = []

    async def until(self, needle: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not in {self.text[-500:]!r}"
            try:
                frame = await asyncio.wait_for(self.socket.recv(), timeout=left)
            except TimeoutError:
                raise AssertionError(f"{needle!r} not in {self.text[-500:]!r} ({self.messages})") from None
            if isinstance(frame, bytes):
                self.text += frame.decode(errors="replace")
            else:
                self.messages.append(json.loads(frame))

    async def type(self, keys: str) -> None:
        await self.socket.send(keys.encode())

    async def retyped_until(self, keys: str, needle: str, timeout: float = 15, every: float = 1) -> None:
        """Type ``keys`` until ``needle`` appears: for effects that reach the container asynchronously (a resize goes
        sshd -> SIGWINCH -> the docker client -> the engine's API, racing the keys typed after it)."""
        deadline = time.monotonic() + timeout
        while True:
            await self.type(keys)
            try:
                await self.until(needle, timeout=min(every, max(deadline - time.monotonic(), 0.1)))
                return
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise


async def open_session(base: str, environment: Any, headers: dict[str, str], token: str, cols: int = 80) -> Any:
    socket = await websockets.connect(url(base, environment), additional_headers=headers)
    await socket.send(json.dumps({"type": "open", "ticket": token, "cols": cols, "rows": 24}))
    ready = json.loads(await asyncio.wait_for(socket.recv(), timeout=20))
    assert ready["type"] == "ready", ready
    return socket


def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.2)


def test_refusals_start_nothing_on_the_server(
    running_env: RunningEnv, live_server_url: str, users: dict[str, Any], orgs: dict[str, Any], settings: Any
) -> None:
    env = running_env
    environment = env.environment
    # Bob's environment (organization B) runs the same containers: only the ticket's binding keeps them apart.
    bravo = Project.objects.create(organization=orgs["b"], name="Erp", slug="erp", git_url="/srv/git/x.git")
    bravo_server = add_lab_server(orgs["b"], users["bob"], env.host, name="lab1-bravo")
    other = Environment.objects.create(
        project=bravo, server=bravo_server, name="prod", compose_files=["prod.yaml"],
        compose_project=env.compose_project,
    )  # fmt: skip
    assert session_processes(env) == []
    origin = {"Origin": live_server_url}
    alice = {"Cookie": session_cookie(users["alice"]), **origin}
    bob = {"Cookie": session_cookie(users["bob"]), **origin}
    victor = {"Cookie": session_cookie(users["victor"]), **origin}
    carol = {"Cookie": session_cookie(users["carol"]), **origin}
    # Viewers, customers and other organizations get no ticket at all.
    for name, target in (("victor", environment), ("carol", environment), ("bob", environment), ("alice", other)):
        client = Client()
        client.force_login(users[name])
        answer = client.post(f"/environments/{target.pk}/terminal/ticket/", {"profile": "shell", "confirm": "yes"})
        assert answer.status_code == 404, name

    settings.TERMINAL_TICKET_SECONDS = 1
    expired = ticket(users["alice"], environment)
    settings.TERMINAL_TICKET_SECONDS = 30
    time.sleep(1.2)
    demoted = ticket(users["olga"], environment)
    Membership.objects.filter(user=users["olga"]).update(role="viewer")
    olga = {"Cookie": session_cookie(users["olga"]), **origin}

    async def scenario() -> list[tuple[int | None, str]]:
        results = []
        results.append(await refused(live_server_url, environment, alice, None))  # no ticket
        results.append(await refused(live_server_url, environment, alice, "n" * 43))  # made up
        results.append(await refused(live_server_url, environment, alice, expired))
        used = await asyncio.to_thread(ticket, users["alice"], environment)
        results.append(await refused(live_server_url, other, alice, used))  # for environment A, used on B's
        results.append(await refused(live_server_url, environment, alice, used))  # ... and then reused
        bobs = await asyncio.to_thread(ticket, users["bob"], other)
        results.append(await refused(live_server_url, environment, bob, bobs))  # B's ticket on A's environment
        stolen = await asyncio.to_thread(ticket, users["alice"], environment)
        results.append(await refused(live_server_url, environment, victor, stolen))  # a viewer with Alice's
        stolen = await asyncio.to_thread(ticket, users["alice"], environment)
        results.append(await refused(live_server_url, environment, carol, stolen))  # a customer with Alice's
        results.append(await refused(live_server_url, environment, olga, demoted))  # operator, now a viewer
        # A foreign Origin, or no session: the handshake itself is refused.
        for headers in ({**alice, "Origin": "http://evil.example"}, {**alice, "Origin": "http://127.0.0.1:1"}, origin):
            with pytest.raises(websockets.exceptions.InvalidStatus) as denied:
                await refused(
                    live_server_url, environment, headers, await asyncio.to_thread(ticket, users["alice"], environment)
                )
            results.append((denied.value.response.status_code, "handshake"))
        return results

    results = asyncio.run(scenario())
    assert results == [
        (4401, "no_ticket"),
        (4401, "unknown_ticket"),
        (4401, "expired_ticket"),
        (4403, "other_environment"),
        (4401, "reused_ticket"),
        (4403, "other_environment"),
        (4401, "foreign_ticket"),
        (4401, "foreign_ticket"),
        (4404, "not_found"),
        (403, "handshake"),
        (403, "handshake"),
        (403, "handshake"),
    ]
    assert session_processes(env) == []
    assert not TerminalSession.objects.exists()
    assert not AuditEvent.objects.filter(action="terminal.started").exists()
    assert AuditEvent.objects.filter(action="terminal.refused", is_security=True).count() >= 9


def test_a_session_runs_resizes_ends_without_orphans_and_is_recorded(
    running_env: RunningEnv, live_server_url: str, users: dict[str, Any]
) -> None:
    env = running_env
    environment = env.environment
    alice = {"Cookie": session_cookie(users["alice"]), "Origin": live_server_url}
    token = ticket(users["alice"], environment)

    async def scenario() -> tuple[list[str], str]:
        socket = await open_session(live_server_url, environment, alice, token)
        screen = Screen(socket)
        await screen.type("echo $((6*7))\r")
        await screen.until("42\r\n")
        await socket.send(json.dumps({"type": "resize", "cols": 101, "rows": 33}))
        await screen.retyped_until("stty size\r", "33 101")
        # A foreground child of the shell, in the container: it must end with the session too.
        await screen.type("sleep 1234 & sleep 4321\r")
        await asyncio.to_thread(wait_for, lambda: len(session_processes(env)) >= 4, "the session's processes")
        running = await asyncio.to_thread(session_processes, env)
        await socket.close()
        return running, screen.text

    running, _text = asyncio.run(scenario())
    assert any(line.startswith("odoo:") for line in running) and any(MARK in line for line in running)
    wait_for(lambda: session_processes(env) == [], "no process of the session left")
    session = TerminalSession.objects.get()
    wait_for(lambda: TerminalSession.objects.get().ended_at is not None, "the session's end recorded")
    session.refresh_from_db()
    assert (session.username, session.profile, session.end_reason) == ("alice", "shell", "closed")
    cast = recording_path(session)
    assert cast is not None
    lines = cast.read_text().splitlines()
    assert json.loads(lines[0])["version"] == 2
    events = [json.loads(line) for line in lines[1:]]
    output = "".join(event[2] for event in events if event[1] == "o")
    assert "42\r\n" in output and "33 101" in output
    assert {event[1] for event in events} <= {"o", "r"}
    started = AuditEvent.objects.get(action="terminal.started")
    assert (started.actor, started.object_id, started.detail["profile"]) == (
        users["alice"],
        str(environment.pk),
        "shell",
    )
    assert AuditEvent.objects.filter(action="terminal.ended", detail__session=session.pk).exists()

    async def reuse() -> tuple[int | None, str]:
        return await refused(live_server_url, environment, alice, token)

    assert asyncio.run(reuse()) == (4401, "reused_ticket")


def test_psql_and_odoo_shell_profiles(running_env: RunningEnv, live_server_url: str, users: dict[str, Any]) -> None:
    env = running_env
    alice = {"Cookie": session_cookie(users["alice"]), "Origin": live_server_url}

    async def scenario() -> None:
        socket = await open_session(
            live_server_url, env.environment, alice, ticket(users["alice"], env.environment, "psql")
        )
        screen = Screen(socket)
        await screen.until(f"{env.database}=#")
        await screen.type("select 6*7 as answer;\r")
        await screen.until("(1 row)")
        assert "42" in screen.text
        await socket.close()
        token = await asyncio.to_thread(ticket, users["alice"], env.environment, "odoo-shell")
        socket = await open_session(live_server_url, env.environment, alice, token)
        screen = Screen(socket)
        await screen.until(">>> ")
        await screen.type("cr.execute('select count(*) from res_users'); print('users', cr.fetchone()[0])\r")
        await screen.until("users 2")
        await socket.close()

    asyncio.run(scenario())
    wait_for(lambda: session_processes(env) == [], "no process of the sessions left")


def test_idle_sessions_and_long_sessions_end(running_env: RunningEnv, short_server: str, users: dict[str, Any]) -> None:
    env = running_env
    alice = {"Cookie": session_cookie(users["alice"]), "Origin": short_server}

    async def idle() -> list[dict[str, Any]]:
        socket = await open_session(short_server, env.environment, alice, ticket(users["alice"], env.environment))
        screen = Screen(socket)
        started = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await screen.until("never", timeout=10)
        assert time.monotonic() - started < 6
        return screen.messages

    async def busy() -> float:
        socket = await open_session(short_server, env.environment, alice, ticket(users["alice"], env.environment))
        screen = Screen(socket)
        started = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            while True:  # a keystroke every second: never idle, but the maximum length ends it
                await screen.type("\r")
                try:
                    await screen.until("never", timeout=1)
                except AssertionError:
                    pass
        return time.monotonic() - started

    async def silent() -> int | None:
        async with websockets.connect(url(short_server, env.environment), additional_headers=alice) as socket:
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), timeout=10)
                await asyncio.wait_for(socket.recv(), timeout=10)
            return socket.close_code

    assert asyncio.run(idle())[-1] == {"type": "end", "reason": "idle_timeout"}
    assert 5 <= asyncio.run(busy()) < 10
    assert asyncio.run(silent()) == 4408  # no ticket within TERMINAL_OPEN_SECONDS
    wait_for(lambda: session_processes(env) == [], "no process of the sessions left")
    reasons = sorted(TerminalSession.objects.values_list("end_reason", flat=True))
    assert reasons == ["idle_timeout", "max_length"]


def test_a_logout_ends_the_session_and_its_processes(
    running_env: RunningEnv, live_server_url: str, users: dict[str, Any]
) -> None:
    """Signing out (the stored session gone) ends an open terminal within the access re-check, like a lost role."""
    from django.contrib.sessions.models import Session

    env = running_env
    cookie = session_cookie(users["alice"])
    alice = {"Cookie": cookie, "Origin": live_server_url}
    token = ticket(users["alice"], env.environment)

    async def scenario() -> tuple[int | None, list[dict[str, Any]], float]:
        socket = await open_session(live_server_url, env.environment, alice, token)
        screen = Screen(socket)
        await screen.type("echo $((6*7))\r")
        await screen.until("42\r\n")
        await asyncio.to_thread(Session.objects.filter(session_key=cookie.partition("=")[2]).delete)
        started = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await screen.until("never", timeout=15)
        return socket.close_code, screen.messages, time.monotonic() - started

    code, messages, took = asyncio.run(scenario())
    assert code == 4401 and messages[-1] == {"type": "end", "reason": "logged_out"}, messages
    assert took < 8
    wait_for(lambda: session_processes(env) == [], "no process of the session left")
    wait_for(lambda: TerminalSession.objects.get().end_reason == "logged_out", "the session's end recorded")
