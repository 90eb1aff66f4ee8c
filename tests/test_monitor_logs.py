"""Live container logs without the lab: who may open the socket, the page and the download, bad ranges, and the
parsing of what docker prints (the lab test, tests/test_monitor_logs_lab.py, follows real containers)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from django.test import Client

from monitoring.logs import docker_time, parse_range, split_line
from panel.remote.containers import parse as parse_services
from tests.ws_helpers import session_cookie, wait_closed

pytestmark = pytest.mark.django_db(transaction=True)


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_refuses_the_socket_to_customers_other_organizations_and_foreign_origins(
    live_server_url: str, users: dict[str, Any], inventory: dict[str, Any]
) -> None:
    environment = inventory["env_a"]
    url = live_server_url.replace("http://", "ws://") + f"/ws/environments/{environment.pk}/logs/odoo/"

    async def refused(headers: dict[str, str]) -> bool:
        try:
            async with websockets.connect(url, additional_headers=headers):
                return False
        except websockets.exceptions.InvalidStatus as exc:
            return exc.response.status_code == 403  # closed before the handshake completed: not one frame

    own = {"Origin": live_server_url}
    assert asyncio.run(refused(own))  # no session
    # A customer of the environment's organization; another organization's owner; a foreign origin.
    assert asyncio.run(refused({**own, "Cookie": session_cookie(users["carol"])}))
    assert asyncio.run(refused({**own, "Cookie": session_cookie(users["bob"])}))
    assert asyncio.run(refused({"Origin": "http://evil.example", "Cookie": session_cookie(users["alice"])}))

    alice = {**own, "Cookie": session_cookie(users["alice"])}

    async def unreachable() -> int | None:
        async with websockets.connect(url, additional_headers=alice) as s:
            code, frames, _ = await wait_closed(s, timeout=30)
            assert frames == []
            return code

    # Staff get past the check; the made-up server cannot be reached: a clear close, never a crash.
    assert asyncio.run(unreachable()) == 4503


def test_it_shows_logs_to_staff_only(users: dict[str, Any], inventory: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    logs = f"/environments/{environment.pk}/logs/"
    download = f"{logs}odoo/download/?since=2026-12-01T10:00"
    carol, bob, victor = (client_of(users[name]) for name in ("carol", "bob", "victor"))
    for client in (carol, bob):
        assert client.get(logs).status_code == 404
        assert client.get(download).status_code == 404
    assert logs not in carol.get(f"/environments/{environment.pk}/").content.decode()
    assert logs in victor.get(f"/environments/{environment.pk}/").content.decode()
    # A viewer reaches the page; the unreachable server is said in words.
    page = victor.get(logs)
    assert page.status_code == 200 and b"cannot be read right now" in page.content


def test_it_answers_400_for_a_range_it_cannot_read(users: dict[str, Any], inventory: dict[str, Any]) -> None:
    alice = client_of(users["alice"])
    base = f"/environments/{inventory['env_a'].pk}/logs/odoo/download/"
    for query in ("", "?since=yesterday", "?since=2026-12-01T10:00&until=2026-12-01T09:00", "?since=2026-12-01%00"):
        response = alice.get(base + query)
        assert response.status_code == 400, query
    with pytest.raises(ValueError, match="after its start"):
        parse_range("2026-12-01T10:00", "2026-12-01T10:00")


def test_it_reads_what_docker_prints() -> None:
    services = parse_services(
        "odoo " + "a" * 64 + " \n"
        "db " + "b" * 64 + " False\n"
        "odoo " + "c" * 64 + " \n"  # an older container of the same service: the newest (listed first) wins
        "odoo " + "d" * 64 + " True\n"  # a one-off compose run
        "$(reboot) " + "e" * 64 + "\n"
        "web not-an-id\n"
    )
    assert services == {"db": "b" * 64, "odoo": "a" * 64}
    assert split_line("2026-12-01T17:20:00.123456789Z hello world") == ("2026-12-01T17:20:00.123456789Z", "hello world")
    assert split_line("2026-12-01T18:20:00.5+01:00 x") == ("2026-12-01T17:20:00.500000000Z", "x")
    assert split_line("no stamp here") == ("", "no stamp here")
    assert docker_time("2026-12-01T17:20:00.123456789Z") == "1796145600.123456789"


def test_it_resumes_a_stream_without_a_gap_or_a_repeat_and_counts_its_lines(settings: Any) -> None:
    """What a follower does when it starts on a stream that still exists (Redis only: the lab test covers SSH)."""
    import redis

    from monitoring.logs import Follower, Source, redis_client, serialize_entry, stream_key
    from panel.remote.ssh import Target

    target = Target(label="x", host="127.0.0.1", port=22, username="u", private_key="", host_key_type="",
                    host_key_base64="")  # fmt: skip
    source = Source(environment_id=987654, service="odoo", target=target, compose_project="p")
    client: redis.Redis = redis_client()
    client.delete(stream_key(987654, "odoo"))
    first = Follower(source, "token")
    since, skip = first._resume_point(client)
    assert (since, skip) == ("", 0)  # a new stream: the follower starts from the tail
    stamp = "2026-12-01T17:20:00.000000001Z"
    first._append(client, [(stamp, "out", "one"), (stamp, "out", "two")], since, skip)
    # The next follower asks docker --since the newest stamp, which sends both lines again, then a new one.
    second = Follower(source, "token")
    since, skip = second._resume_point(client)
    assert (since, skip) == (stamp, 2)
    later = "2026-12-01T17:20:01.000000000Z"
    second._append(client, [(stamp, "out", "one"), (stamp, "out", "two"), (later, "err", "three")], since, skip)
    entries = [serialize_entry(i, f) for i, f in client.xrange(stream_key(987654, "odoo"))]
    assert [(e["n"], e["text"], e["stream"]) for e in entries] == [
        (1, "one", "out"),
        (2, "two", "out"),
        (3, "three", "err"),
    ]
    client.delete(stream_key(987654, "odoo"))
