"""Behind a reverse proxy: the client address comes from X-Forwarded-For through trusted proxies only.

Against the real uvicorn, twice: as production runs it (``live_server_url``: ``--proxy-headers
--forwarded-allow-ips`` with the same list as Django's ``PANEL_TRUSTED_PROXIES``, loopback ``127.0.0.1`` in the
tests), where uvicorn rewrites the client before Django sees it, and with ``--no-proxy-headers``, where Django's
``client_ip`` alone reads the header. Both must give the same answers. Requests from ``127.0.0.1`` play the proxy;
requests bound to ``127.0.0.2`` play a client that reaches the panel directly, an untrusted peer. The forwarded
addresses are documentation ranges that only ever appear in headers.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.test import RequestFactory
from requests.adapters import HTTPAdapter

from panel.accounts import services
from panel.accounts.models import AuditEvent
from tests.conftest import PASSWORD, ManagedProcess, free_port, wait_for_port

PROXY = "127.0.0.1"
UNTRUSTED_PEER = "127.0.0.2"
ATTACKER = "198.51.100.7"
COLLEAGUE = "203.0.113.20"
LOCKED = "Too many failed attempts"
WRONG = "Please enter a correct username and password"


class SourceAddressAdapter(HTTPAdapter):
    """Connect from a chosen local address (any 127.0.0.0/8 address works on Linux loopback)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def browser_from(peer: str, forwarded_for: str | None = None) -> requests.Session:
    """An HTTP client connecting from ``peer``, sending ``X-Forwarded-For`` (as a proxy would) when given."""
    session = requests.Session()
    adapter = SourceAddressAdapter(peer)
    session.mount("http://", adapter)
    if forwarded_for is not None:
        session.headers["X-Forwarded-For"] = forwarded_for
    return session


def log_in(session: requests.Session, base_url: str, username: str, password: str) -> requests.Response:
    """Fill in the login form like a browser: fetch it (CSRF token and cookie), then post it."""
    form = session.get(f"{base_url}/login/", timeout=10)
    assert form.status_code == 200
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert match is not None
    return session.post(
        f"{base_url}/login/",
        data={"csrfmiddlewaretoken": match.group(1), "username": username, "password": password, "next": ""},
        allow_redirects=False,
        timeout=10,
    )


def made_up_name() -> str:
    return f"ghost-{secrets.token_hex(4)}"


@pytest.fixture
def admin(transactional_db: Any, make_user: Any) -> Any:
    from panel.accounts.models import Organization

    organization = Organization.objects.create(name="Proxy Hosting", slug="proxy-hosting")
    user = make_user("proxy-admin", organization, "owner")
    user.is_superuser = True  # failed logins belong to no organization: superusers read them in the audit log
    user.save(update_fields=["is_superuser"])
    return user


@pytest.fixture(scope="module")
def uvicorn_without_proxy_headers(django_db_setup: Any, process_logs: Path) -> Iterator[str]:
    """uvicorn leaving X-Forwarded-For alone: Django's trusted-proxy walk decides by itself."""
    port = free_port()
    proc = ManagedProcess(
        "uvicorn-no-proxy-headers",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "panel.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-proxy-headers",
            "--log-level",
            "warning",
        ],
        process_logs / "uvicorn-no-proxy-headers.log",
    )
    proc.start()
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(params=["live_server_url", "uvicorn_without_proxy_headers"])
def base_url(request: pytest.FixtureRequest) -> str:
    """The panel behind uvicorn as production runs it, and behind uvicorn without its proxy-header handling."""
    return str(request.getfixturevalue(request.param))


def address_limit() -> int:
    return int(settings.LOGIN_LOCKOUT_ATTEMPTS) * 4


def test_it_locks_out_the_flooding_address_only_and_records_real_client_addresses(base_url: str, admin: Any) -> None:
    attacker = browser_from(PROXY, ATTACKER)
    for _ in range(address_limit()):
        response = log_in(attacker, base_url, made_up_name(), "guess")
        assert response.status_code == 200 and WRONG in response.text
    # The address is locked now, whatever name it tries, even a real one with the right password.
    response = log_in(attacker, base_url, made_up_name(), "guess")
    assert response.status_code == 200 and LOCKED in response.text
    response = log_in(attacker, base_url, "proxy-admin", PASSWORD)
    assert response.status_code == 200 and LOCKED in response.text

    # The real user, behind the same proxy but from another address, logs in; the proxy's own address is not locked.
    colleague = browser_from(PROXY, COLLEAGUE)
    response = log_in(colleague, base_url, "proxy-admin", PASSWORD)
    assert response.status_code == 302, response.text[-500:]
    assert colleague.get(f"{base_url}/servers/", timeout=10).status_code == 200
    # A longer chain: whatever the client wrote itself (left) is not believed; the proxy's hop (right) is.
    chained = browser_from(PROXY, f"{ATTACKER}, 203.0.113.21")
    assert log_in(chained, base_url, "proxy-admin", PASSWORD).status_code == 302

    failed = AuditEvent.objects.filter(action="login.failed")
    assert failed.count() == address_limit()
    assert set(failed.values_list("ip", flat=True)) == {ATTACKER}
    assert set(AuditEvent.objects.filter(action="login.locked").values_list("ip", flat=True)) == {ATTACKER}
    assert set(AuditEvent.objects.filter(action="login.succeeded").values_list("ip", flat=True)) == {
        COLLEAGUE,
        "203.0.113.21",
    }
    assert not AuditEvent.objects.filter(ip=PROXY).exists()

    # The audit log page shows the clients' addresses, never the proxy's.
    page = colleague.get(f"{base_url}/audit/", timeout=10).text
    assert ATTACKER in page and COLLEAGUE in page
    assert f">{PROXY}<" not in page


def test_it_ignores_x_forwarded_for_from_an_untrusted_peer(base_url: str, admin: Any) -> None:
    # A client that reaches uvicorn directly makes up a new X-Forwarded-For for every try: it is ignored, so the
    # tries all count for the client's real address, which is locked like any other.
    for attempt in range(address_limit()):
        spoofer = browser_from(UNTRUSTED_PEER, f"192.0.2.{attempt + 1}")
        response = log_in(spoofer, base_url, made_up_name(), "guess")
        assert response.status_code == 200 and WRONG in response.text
    spoofer = browser_from(UNTRUSTED_PEER, COLLEAGUE)
    response = log_in(spoofer, base_url, "proxy-admin", PASSWORD)
    assert response.status_code == 200 and LOCKED in response.text

    events = AuditEvent.objects.filter(action__in=["login.failed", "login.locked"])
    assert events.count() == address_limit() + 1
    assert set(events.values_list("ip", flat=True)) == {UNTRUSTED_PEER}
    assert not AuditEvent.objects.filter(ip__startswith="192.0.2.").exists()
    assert not AuditEvent.objects.filter(ip=COLLEAGUE).exists()

    # Users behind the proxy are not affected by that lock.
    assert log_in(browser_from(PROXY, COLLEAGUE), base_url, "proxy-admin", PASSWORD).status_code == 302
    assert AuditEvent.objects.get(action="login.succeeded").ip == COLLEAGUE


# client_ip() itself, without uvicorn in front (a server that leaves X-Forwarded-For to Django) ---------------------


@pytest.fixture
def trusted(settings: Any) -> Iterator[Any]:
    """Set PANEL_TRUSTED_PROXIES for one test (the parsed list is cached)."""

    def use(*entries: str) -> None:
        settings.PANEL_TRUSTED_PROXIES = list(entries)
        services.trusted_proxies.cache_clear()

    yield use
    services.trusted_proxies.cache_clear()


def client_ip(peer: str, forwarded_for: str | None = None) -> str | None:
    headers = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for is not None else {}
    return services.client_ip(RequestFactory().get("/", REMOTE_ADDR=peer, **headers))


def test_it_walks_x_forwarded_for_from_the_right_through_trusted_proxies(trusted: Any) -> None:
    trusted("10.0.0.0/8", "192.168.1.5", "fd00::/8")
    assert client_ip("192.168.1.5", "203.0.113.9") == "203.0.113.9"
    # Spoofed hops left of the first untrusted address are ignored; trusted hops right of it are skipped.
    assert client_ip("192.168.1.5", "1.1.1.1, 203.0.113.9, 10.2.3.4") == "203.0.113.9"
    assert client_ip("10.9.9.9", "203.0.113.9:51234, [fd00::1]:443") == "203.0.113.9"
    assert client_ip("fd00::7", "2001:db8::5") == "2001:db8::5"
    assert client_ip("::ffff:10.1.1.1", "203.0.113.9") == "203.0.113.9"
    # Every hop trusted: the leftmost is the client (as uvicorn decides too).
    assert client_ip("10.0.0.1", "10.0.0.2, 10.0.0.3") == "10.0.0.2"
    # No header: the proxy itself is the caller.
    assert client_ip("10.0.0.1") == "10.0.0.1"
    # An unreadable hop where the client should be is unknown, not a guess.
    assert client_ip("10.0.0.1", "203.0.113.9, not-an-address") is None
    assert client_ip("10.0.0.1", "203.0.113.9, ") is None


def test_it_ignores_x_forwarded_for_without_a_trusted_peer(trusted: Any) -> None:
    trusted("10.0.0.0/8")
    assert client_ip("203.0.113.9", "10.0.0.1") == "203.0.113.9"
    assert client_ip("203.0.113.9", "198.51.100.1, 10.0.0.1") == "203.0.113.9"
    trusted("none")
    assert client_ip("127.0.0.1", "198.51.100.1") == "127.0.0.1"
    assert client_ip("not-an-address", "198.51.100.1") is None


def test_it_refuses_a_malformed_trusted_proxy_list(trusted: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    trusted("10.0.0.0/8", "proxy.example.com")
    with pytest.raises(ImproperlyConfigured, match=r"proxy\.example\.com"):
        services.trusted_proxies()
