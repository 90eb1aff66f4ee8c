"""``panel.remote.tunnel`` against lab1's real sshd: an HTTP request over a direct-tcpip channel of the pooled
connection to an address only the server reaches, a refused port and a silent service as clear errors, names
refused, and the connection's channel count given back every time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from panel.remote.ssh import get_connection
from panel.remote.tunnel import TunnelError, request
from tests.lab_helpers import lab_target

pytestmark = pytest.mark.lab

SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/slow"):
            import time; time.sleep(30)
        body = ('{"path": "%s"}' % self.path).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 8025), H).serve_forever()
"""


@pytest.fixture
def service(lab1: Any) -> Any:
    """A small HTTP service in a container on lab1 (no published port); yields its IP."""
    name = "panel-tunnel-test"
    lab1.docker("rm", "-f", name)
    image = "mailhog/mailhog:latest"
    lab1.docker("run", "-d", "--name", name, "--entrypoint", "python3", image, "-c", SERVER, check=True)
    address = lab1.docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name, check=True).stdout.strip()
    if not address:
        networks = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        address = lab1.docker("inspect", "--format", networks, name, check=True).stdout.split()[0]
    yield address
    lab1.docker("rm", "-f", name)


def test_it_requests_a_container_through_the_ssh_connection(lab1: Any, service: str) -> None:
    target = lab_target(lab1)
    deadline = time.monotonic() + 15
    while True:
        try:
            answer = request(target, service, 8025, "GET", "/api/v2/messages", query={"q": "a b&c"}, timeout=5)
            break
        except TunnelError:
            assert time.monotonic() < deadline, "the service never answered"
            time.sleep(0.3)
    assert answer.status == 200 and answer.json() == {"path": "/api/v2/messages?q=a+b%26c"}
    connection = get_connection(target)
    free_before = connection.channels._value  # type: ignore[attr-defined]
    with pytest.raises(TunnelError, match="could not connect"):
        request(target, service, 8026, "GET", "/", timeout=5)  # nothing listens there
    with pytest.raises(TunnelError, match="is not an IP address"):
        request(target, "smtplocal", 8025, "GET", "/")
    started = time.monotonic()
    with pytest.raises(Exception, match="did not answer within 1 s"):
        request(target, service, 8025, "GET", "/slow", timeout=1)
    assert time.monotonic() - started < 5
    with pytest.raises(TunnelError, match="more than 10 bytes"):
        request(target, service, 8025, "GET", "/long-enough-path", limit=10)
    assert connection.channels._value == free_before  # type: ignore[attr-defined]
    # Nothing was published on the server for it.
    ports = lab1.docker("port", "panel-tunnel-test").stdout.strip()
    assert ports == ""
