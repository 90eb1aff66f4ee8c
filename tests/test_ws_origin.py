"""The websocket Origin check compares scheme, host and port with the panel's own origins (real uvicorn, real
websockets client): a page on another port, scheme or host of the machine cannot ride a user's session."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from panel.asgi import origin_matches, parse_origin
from panel.jobs.choices import JobStatus
from panel.jobs.models import Job, JobLogLine
from tests.conftest import ManagedProcess, free_port, wait_for_port
from tests.ws_helpers import lines_of, read_until, session_cookie, ws_url

pytestmark = pytest.mark.django_db(transaction=True)

REFUSED = "refused"


@pytest.fixture
def finished_job(orgs: dict[str, Any]) -> Job:
    job = Job.objects.create(kind="test_emit", organization=orgs["a"], status=JobStatus.SUCCEEDED, last_seq=1)
    JobLogLine.objects.create(job=job, seq=1, text="output only the panel's own pages may read")
    return job


def attempt(url: str, headers: dict[str, str], host: str | None = None) -> Any:
    """The lines a socket got, or REFUSED when the server closed it before accepting (HTTP 403, no frame).

    With ``host``, the request says ``Host: host`` but still goes to the server of ``url``.
    """
    connect: dict[str, Any] = {}
    if host is not None:
        address, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        connect = {"host": address, "port": int(port)}
        url = url.replace(f"{address}:{port}", host)

    async def run() -> Any:
        try:
            async with websockets.connect(url, additional_headers=headers, **connect) as socket:
                frames = await read_until(socket, lambda f, fs: f["type"] == "status", timeout=10)
        except websockets.exceptions.InvalidStatus as refused:
            assert refused.response.status_code == 403
            return REFUSED
        return lines_of(frames)

    return asyncio.run(run())


@pytest.mark.parametrize(
    "origin",
    [
        "https://127.0.0.1:{port}",  # wrong scheme
        "http://127.0.0.1:1",  # wrong port
        "http://127.0.0.1",  # wrong port (80)
        "http://evil.example:{port}",  # foreign host
        "http://localhost:{port}",  # an allowed host, but not the one this page came from
        "null",  # sandboxed frames, file: pages
        "http://127.0.0.1:{port}/jobs/",  # not an origin
        None,  # no Origin: browsers always send one, so only a non-browser client omits it
    ],
)
def test_it_refuses_a_socket_from_any_other_origin_before_any_data(
    origin: str | None, live_server_url: str, users: dict[str, Any], finished_job: Job
) -> None:
    port = live_server_url.rsplit(":", 1)[1]
    headers = {"Cookie": session_cookie(users["alice"])}
    if origin is not None:
        headers["Origin"] = origin.format(port=port)
    assert attempt(ws_url(live_server_url, finished_job.pk), headers) == REFUSED


def test_it_accepts_the_panels_own_origin(live_server_url: str, users: dict[str, Any], finished_job: Job) -> None:
    headers = {"Cookie": session_cookie(users["alice"]), "Origin": live_server_url}
    assert attempt(ws_url(live_server_url, finished_job.pk), headers) == [1]
    localhost = live_server_url.replace("127.0.0.1", "localhost")
    assert attempt(ws_url(localhost, finished_job.pk), headers | {"Origin": localhost}) == [1]


def test_it_refuses_a_host_the_panel_does_not_serve_even_with_a_matching_origin(
    live_server_url: str, users: dict[str, Any], finished_job: Job
) -> None:
    """DNS rebinding: evil.example resolves to the panel, so Host and Origin agree; the Host is not allowed."""
    port = live_server_url.rsplit(":", 1)[1]
    headers = {"Cookie": session_cookie(users["alice"]), "Origin": f"http://evil.example:{port}"}
    assert attempt(ws_url(live_server_url, finished_job.pk), headers, host=f"evil.example:{port}") == REFUSED


@pytest.fixture
def proxied_panel(django_db_setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """uvicorn as behind a TLS proxy: PANEL_BEHIND_PROXY, a trusted public origin, and no proxy-header rewriting
    by uvicorn itself, so the panel's own reading of X-Forwarded-Proto decides."""
    monkeypatch.setenv("PANEL_BEHIND_PROXY", "true")
    monkeypatch.setenv("PANEL_CSRF_TRUSTED_ORIGINS", "https://panel.example.test")
    monkeypatch.setenv("PANEL_ALLOWED_HOSTS", "127.0.0.1,panel.example.test")
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    proc = ManagedProcess("uvicorn-proxied", [*argv, "--no-proxy-headers"], tmp_path / "uvicorn.log")
    proc.start()
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.mark.parametrize(
    ("forwarded_proto", "host", "origin", "expected"),
    [
        ("https", None, "https://127.0.0.1:{port}", [1]),
        ("https", None, "http://127.0.0.1:{port}", REFUSED),  # the page is https, this origin is not
        ("http", None, "http://127.0.0.1:{port}", [1]),
        ("wss", None, "https://127.0.0.1:{port}", [1]),  # some proxies say wss for websockets
        ("https", "panel.example.test", "https://panel.example.test", [1]),
        ("https", None, "https://panel.example.test", [1]),  # a trusted origin, whatever Host the proxy sends
        ("https", "panel.example.test", "https://panel.example.test:8443", REFUSED),
        ("https", "panel.example.test", "http://panel.example.test", REFUSED),
        ("https", None, "https://evil.example.test", REFUSED),
    ],
)
def test_it_follows_the_forwarded_protocol_and_trusted_origins_behind_a_proxy(
    forwarded_proto: str,
    host: str | None,
    origin: str,
    expected: Any,
    proxied_panel: str,
    users: dict[str, Any],
    finished_job: Job,
) -> None:
    port = proxied_panel.rsplit(":", 1)[1]
    headers = {
        "Cookie": session_cookie(users["alice"]),
        "X-Forwarded-Proto": forwarded_proto,
        "Origin": origin.format(port=port),
    }
    assert attempt(ws_url(proxied_panel, finished_job.pk), headers, host=host) == expected


def test_it_compares_origins_by_scheme_host_and_port() -> None:
    def same(origin: str, allowed: str) -> bool:
        parsed, pattern = parse_origin(origin), parse_origin(allowed, configured=True)
        return parsed is not None and pattern is not None and origin_matches(parsed, pattern)

    assert same("https://panel.example.com", "https://panel.example.com:443/")
    assert same("HTTPS://Panel.Example.com", "https://panel.example.com")
    assert same("http://[::1]:8000", "http://[::1]:8000")
    assert same("https://eu.panel.example.com", "https://*.panel.example.com")
    assert same("https://panel.example.com", "https://*.panel.example.com")
    assert not same("https://evilpanel.example.com", "https://*.panel.example.com")
    assert not same("https://eu.panel.example.com:8443", "https://*.panel.example.com")
    assert not same("http://panel.example.com", "https://panel.example.com")
    assert not same("https://user@panel.example.com", "https://panel.example.com")
    for junk in ("", "null", "panel.example.com", "ftp://panel.example.com", "https://", "https://x:99999"):
        assert parse_origin(junk) is None, junk
