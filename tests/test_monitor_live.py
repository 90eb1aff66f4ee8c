"""Live health over the real websocket (uvicorn + websockets client): what the poller's ``environments_changed``
pushes reaches the dashboard and environment page sockets, each cut down to what its user may see; one message per
organization; refused and closed sockets for users without (or losing) access."""

from __future__ import annotations

import asyncio
import json
import os
import time
from importlib import import_module
from typing import Any

import pytest
import websockets
from django.conf import settings
from django.utils import timezone

from monitoring import live
from monitoring.models import EnvironmentHealth, ServerHealth
from panel.accounts.models import Membership
from panel.accounts.services import remove_member
from panel.inventory.models import Environment
from panel.jobs.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from tests.ws_helpers import in_thread, session_cookie, wait_closed

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = pytest.mark.django_db(transaction=True)


def health_url(base: str, environment_id: int | None = None) -> str:
    query = f"?environment={environment_id}" if environment_id is not None else ""
    return base.replace("http://", "ws://") + "/ws/health/" + query


def set_health(environment: Environment, state: str, message: str = "", **fields: Any) -> None:
    EnvironmentHealth.objects.update_or_create(
        environment=environment,
        defaults={"state": state, "message": message, "since": timezone.now(), "polled_at": timezone.now(), **fields},
    )


async def frames_until(socket: Any, stop: Any, timeout: float = 10) -> list[dict[str, Any]]:
    """Health frames until ``stop(frame)``; fails after ``timeout`` seconds."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; got {frames}")
        try:
            frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=left))
        except TimeoutError:
            raise AssertionError(f"timed out; got {frames}") from None
        frames.append(frame)
        if stop(frame):
            return frames


def states(frame: dict[str, Any]) -> dict[int, str]:
    return {env["id"]: env["state"] for env in frame["environments"]}


def test_it_pushes_health_changes_to_each_viewer_as_they_may_see_them(
    live_server_url: str, users: dict[str, Any], inventory: dict[str, Any], orgs: dict[str, Any], make_user: Any
) -> None:
    env_a, env_b = inventory["env_a"], inventory["env_b"]
    set_health(env_a, "up", http_ms=80.0)
    set_health(env_b, "up")
    ServerHealth.objects.create(server=inventory["server_a"], reachable=True, load1=0.5, cpus=2)
    base = live_server_url
    # Dora operates the customer organization itself: she sees its environments in detail, not the provider's server.
    users = {**users, "dora": make_user("dora", orgs["a1"], "operator")}
    cookies = {name: session_cookie(users[name]) for name in ("olga", "carol", "bob", "dora")}

    async def run() -> dict[str, Any]:
        def connect(name: str, environment_id: int | None = None) -> Any:
            return websockets.connect(
                health_url(base, environment_id), additional_headers={"Cookie": cookies[name], "Origin": base}
            )

        async with (
            connect("olga") as staff,
            connect("carol") as customer,
            connect("carol", env_a.pk) as customer_page,
            connect("bob") as other,
            connect("dora") as customer_staff,
        ):
            # Each socket starts with the current health of what it may see.
            staff_first = await frames_until(staff, lambda f: env_a.pk in states(f))
            customer_first = await frames_until(customer, lambda f: env_a.pk in states(f))
            await frames_until(customer_page, lambda f: env_a.pk in states(f))
            other_first = await frames_until(other, lambda f: env_b.pk in states(f))

            def go_down() -> None:
                set_health(env_a, "down", "Odoo's /web/health does not answer: connection refused.", http_ms=None)
                set_health(env_b, "degraded", "Port 8072 refuses connections.")
                live.environments_changed([env_a.pk, env_b.pk])

            await asyncio.to_thread(in_thread, go_down)
            staff_down = await frames_until(staff, lambda f: states(f).get(env_a.pk) == "down")
            customer_down = await frames_until(customer, lambda f: states(f).get(env_a.pk) == "down")
            page_down = await frames_until(customer_page, lambda f: states(f).get(env_a.pk) == "down")
            other_frames = await frames_until(other, lambda f: states(f).get(env_b.pk) == "degraded")
            dora = await frames_until(customer_staff, lambda f: states(f).get(env_a.pk) == "down")
            return {
                "staff_first": staff_first, "customer_first": customer_first, "other_first": other_first,
                "staff_down": staff_down[-1], "customer_down": customer_down[-1], "page_down": page_down[-1],
                "other": other_first + other_frames, "dora": dora,
            }  # fmt: skip

    seen = asyncio.run(run())
    staff_env = next(env for env in seen["staff_down"]["environments"] if env["id"] == env_a.pk)
    assert staff_env["message"].startswith("Odoo's /web/health does not answer")
    assert staff_env["state_label"] == "Down" and staff_env["css"] == "problem"
    assert set(staff_env["uptime"]) == {"24h", "7d", "30d", "365d"}
    assert [s["id"] for s in seen["staff_first"][-1]["servers"]] == [inventory["server_a"].pk]
    assert seen["staff_first"][-1]["servers"][0]["load1"] == 0.5
    customer_env = seen["customer_down"]["environments"][0]
    assert set(customer_env) == {"id", "state", "state_label", "css", "since", "uptime"}, "no message, no resources"
    assert seen["customer_down"]["servers"] == [] and seen["customer_first"][-1]["servers"] == []
    assert [env["id"] for env in seen["page_down"]["environments"]] == [env_a.pk]
    assert all(frame["servers"] == [] for frame in seen["dora"])
    assert seen["dora"][-1]["environments"][0]["message"].startswith("Odoo's /web/health")
    # Bob (organization B) never hears of A's environment, only of his own.
    assert all(env["id"] == env_b.pk for frame in seen["other"] for env in frame["environments"])
    assert all(server["id"] == inventory["server_b"].pk for frame in seen["other"] for server in frame["servers"])


def test_it_sends_one_message_per_organization_whatever_the_viewers(
    inventory: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    second = Environment.objects.create(
        project=inventory["project_a"], server=inventory["server_a"], name="staging", kind="staging",
        compose_files=["prod.yaml"], compose_project="shop-16-0-staging",
    )  # fmt: skip
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(live, "publish", lambda group, message: sent.append((group, message)))
    live.environments_changed([inventory["env_a"].pk, second.pk, inventory["env_b"].pk])
    groups = sorted(group for group, _ in sent)
    org_a1, org_b = inventory["project_a"].organization_id, inventory["project_b"].organization_id
    assert groups == sorted([live.health_group(org_a1), live.health_group(org_b)])
    a1 = next(message for group, message in sent if group == live.health_group(org_a1))
    assert sorted(env["id"] for env in a1["environments"]) == sorted([inventory["env_a"].pk, second.pk])
    assert all(env["state"] == "unknown" for env in a1["environments"]), "never polled"
    live.environments_changed([])
    assert len(sent) == 2


def test_it_refuses_a_socket_for_an_environment_the_user_may_not_see(
    live_server_url: str, users: dict[str, Any], inventory: dict[str, Any]
) -> None:
    """Refused before the handshake completes (HTTP 403, not a single frame), as the job log's sockets are."""
    base = live_server_url
    ws = base.replace("http://", "ws://")
    bob = {"Cookie": session_cookie(users["bob"]), "Origin": base}
    attempts = {
        "other organization's environment": (health_url(base, inventory["env_a"].pk), bob),
        "malformed id": (ws + "/ws/health/?environment=x", bob),
        "no such environment": (health_url(base, 999999), bob),
        "no Origin": (health_url(base), {"Cookie": bob["Cookie"]}),
        "another origin": (health_url(base), {"Cookie": bob["Cookie"], "Origin": "http://127.0.0.1:1"}),
        "not signed in": (health_url(base), {"Origin": base}),
    }

    async def attempt(url: str, headers: dict[str, str]) -> int | str:
        try:
            async with websockets.connect(url, additional_headers=headers) as socket:
                return f"accepted, got {await socket.recv()!r}"
        except websockets.exceptions.InvalidStatus as refused:
            return int(refused.response.status_code)

    async def run() -> dict[str, int | str]:
        return {name: await attempt(url, headers) for name, (url, headers) in attempts.items()}

    assert asyncio.run(run()) == dict.fromkeys(attempts, 403)

    # Bob's own environment is fine.
    async def own() -> dict[str, Any]:
        async with websockets.connect(health_url(base, inventory["env_b"].pk), additional_headers=bob) as socket:
            return json.loads(await asyncio.wait_for(socket.recv(), timeout=10))

    assert [env["id"] for env in asyncio.run(own())["environments"]] == [inventory["env_b"].pk]


@pytest.mark.parametrize(("change", "expected"), [("removed", CLOSE_FORBIDDEN), ("logged out", CLOSE_UNAUTHENTICATED)])
def test_it_closes_a_socket_soon_after_the_user_loses_access(
    change: str,
    expected: int,
    live_server_url: str,
    users: dict[str, Any],
    orgs: dict[str, Any],
    inventory: dict[str, Any],
) -> None:
    base = live_server_url
    set_health(inventory["env_a"], "up")
    membership = Membership.objects.get(user=users["carol"], organization=orgs["a1"])
    bound = settings.JOB_WS_ACCESS_CHECK_SECONDS + 2
    cookie = session_cookie(users["carol"])  # ORM outside the event loop's context
    headers = {"Cookie": cookie, "Origin": base}

    def revoke() -> None:
        if change == "removed":
            remove_member(actor=users["alice"], membership=membership)
        else:  # what a logout does to the stored session
            import_module(settings.SESSION_ENGINE).SessionStore(session_key=cookie.split("=", 1)[1]).delete()

    async def run() -> tuple[Any, ...]:
        async with websockets.connect(health_url(base), additional_headers=headers) as socket:
            await frames_until(socket, lambda f: inventory["env_a"].pk in states(f))
            await asyncio.to_thread(in_thread, revoke)

            def push() -> None:
                set_health(inventory["env_a"], "down", "secret detail")
                live.environments_changed([inventory["env_a"].pk])

            await asyncio.to_thread(in_thread, push)
            return await wait_closed(socket, timeout=bound + 10)

    code, _, took = asyncio.run(run())
    assert code == expected
    assert took <= bound, f"closed {took:.1f}s after the change"
